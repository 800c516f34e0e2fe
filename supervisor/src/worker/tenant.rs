//! A model's handle as the memory guard sees it (`memory::Tenant`).

use super::WorkerHandle;
use crate::config::ModelSpec;
use crate::lifecycle::KillReason;
use crate::memory::{Done, SharedMemory, Tenant, View};

impl Tenant for WorkerHandle {
    fn spec(&self) -> &ModelSpec {
        &self.spec
    }

    fn view(&self) -> View {
        let s = self.status();
        View {
            state: s.state,
            pid: s.pid,
            loaded_unix_ms: s.loaded_unix_ms,
            reported_gpu: s.memory.map(|r| r.gpu).unwrap_or_default(),
        }
    }

    fn figures(&self) -> &SharedMemory {
        &self.memory
    }

    fn busy(&self) -> bool {
        WorkerHandle::busy(self)
    }

    fn last_used_ms(&self) -> i64 {
        WorkerHandle::last_used_ms(self)
    }

    fn kill(&self, pid: u32, reason: KillReason, note: String) -> Done<'_> {
        Box::pin(WorkerHandle::kill(self, pid, reason, note))
    }

    fn evict(&self, note: String) -> Done<'_> {
        Box::pin(WorkerHandle::evict(self, note))
    }

    fn current(&self) -> bool {
        !self.is_aside()
    }
}
