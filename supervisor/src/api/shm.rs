//! SharedMemoryService: the caller's shared-memory regions (`crate::shm`).

use std::sync::Arc;

use sidecar_proto::v1::shared_memory_service_server::SharedMemoryService;
use sidecar_proto::v1::{
    ListRegionsRequest, ListRegionsResponse, RegionStatus, RegisterRegionRequest,
    UnregisterRegionRequest, UnregisterRegionResponse,
};
use tonic::{Request, Response, Status};

use crate::error::Error;
use crate::shm::{Caller, Region, Regions, Registration};

/// The SharedMemoryService implementation.
#[derive(Debug, Clone)]
pub struct ShmApi {
    /// The supervisor's regions.
    pub regions: Arc<Regions>,
}

fn status(r: &Region) -> RegionStatus {
    RegionStatus {
        name: r.name.clone(),
        key: r.key.clone(),
        offset: r.offset,
        byte_size: r.byte_size,
        writable: r.writable,
        in_use: r.in_use(),
    }
}

#[tonic::async_trait]
impl SharedMemoryService for ShmApi {
    async fn register_region(
        &self,
        req: Request<RegisterRegionRequest>,
    ) -> Result<Response<RegionStatus>, Status> {
        let caller = Caller::of_call(&req);
        let r = req.into_inner();
        let regions = self.regions.clone();
        // Opening and fstat touch the file system: off the async workers.
        let region = tokio::task::spawn_blocking(move || {
            regions.register(
                &caller,
                Registration {
                    name: r.name,
                    key: r.key,
                    offset: r.offset,
                    byte_size: r.byte_size,
                    writable: r.writable,
                },
            )
        })
        .await
        .map_err(|e| Error::Internal(format!("register task: {e}")))??;
        Ok(Response::new(status(&region)))
    }

    async fn unregister_region(
        &self,
        req: Request<UnregisterRegionRequest>,
    ) -> Result<Response<UnregisterRegionResponse>, Status> {
        let caller = Caller::of_call(&req);
        let name = req.into_inner().name;
        let gone = self.regions.unregister(&caller, &name);
        if gone.is_empty() && !name.is_empty() {
            return Err(Error::NotFound(format!(
                "shared-memory region {} is not registered",
                crate::shm::names::shown(&name)
            ))
            .into());
        }
        Ok(Response::new(UnregisterRegionResponse {
            unregistered: gone.len() as u32,
        }))
    }

    async fn list_regions(
        &self,
        req: Request<ListRegionsRequest>,
    ) -> Result<Response<ListRegionsResponse>, Status> {
        let caller = Caller::of_call(&req);
        let name = req.into_inner().name;
        let found = self.regions.list(&caller, &name);
        if found.is_empty() && !name.is_empty() {
            return Err(Error::NotFound(format!(
                "shared-memory region {} is not registered",
                crate::shm::names::shown(&name)
            ))
            .into());
        }
        Ok(Response::new(ListRegionsResponse {
            regions: found.iter().map(|r| status(r)).collect(),
        }))
    }
}
