//! The Open Inference Protocol's SystemSharedMemory* calls on the same
//! registry, with Triton's semantics: a register opens read-write when it
//! can (read-only otherwise); the status of an unknown name is NOT_FOUND;
//! unregistering an unknown name is OK. The OIP service calls these with
//! the caller ([`Caller::of_call`]).

use sidecar_proto::inference::system_shared_memory_status_response::RegionStatus;
use sidecar_proto::inference::{
    SystemSharedMemoryRegisterRequest, SystemSharedMemoryRegisterResponse,
    SystemSharedMemoryStatusRequest, SystemSharedMemoryStatusResponse,
    SystemSharedMemoryUnregisterRequest, SystemSharedMemoryUnregisterResponse,
};

use super::{Caller, Regions, Registration};
use crate::error::Error;

/// SystemSharedMemoryRegister.
pub fn register(
    regions: &Regions,
    caller: &Caller,
    req: SystemSharedMemoryRegisterRequest,
) -> Result<SystemSharedMemoryRegisterResponse, Error> {
    regions.register(
        caller,
        Registration {
            name: req.name,
            key: req.key,
            offset: req.offset,
            byte_size: req.byte_size,
            writable: false,
        },
    )?;
    Ok(SystemSharedMemoryRegisterResponse {})
}

/// SystemSharedMemoryStatus: the caller's regions (or one; an unknown
/// name is NOT_FOUND).
pub fn status(
    regions: &Regions,
    caller: &Caller,
    req: SystemSharedMemoryStatusRequest,
) -> Result<SystemSharedMemoryStatusResponse, Error> {
    let found = regions.list(caller, &req.name);
    if found.is_empty() && !req.name.is_empty() {
        return Err(Error::NotFound(format!(
            "shared-memory region {} is not registered",
            super::names::shown(&req.name)
        )));
    }
    Ok(SystemSharedMemoryStatusResponse {
        regions: found
            .into_iter()
            .map(|r| {
                (
                    r.name.clone(),
                    RegionStatus {
                        name: r.name.clone(),
                        key: r.key.clone(),
                        offset: r.offset,
                        byte_size: r.byte_size,
                    },
                )
            })
            .collect(),
    })
}

/// SystemSharedMemoryUnregister: one region, or all of the caller's with
/// an empty name; an unknown name is OK (Triton's answer).
pub fn unregister(
    regions: &Regions,
    caller: &Caller,
    req: SystemSharedMemoryUnregisterRequest,
) -> Result<SystemSharedMemoryUnregisterResponse, Error> {
    regions.unregister(caller, &req.name);
    Ok(SystemSharedMemoryUnregisterResponse {})
}
