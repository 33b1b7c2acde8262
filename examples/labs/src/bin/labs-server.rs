//! `labs-server HOST:PORT`: the example labs.v1.LabResults service, plaintext h2 on loopback
//! (Envoy terminates mTLS in front of it).

use phi_guard_labs::labs::v1::lab_results_server::{LabResults, LabResultsServer};
use phi_guard_labs::labs::v1::{
    DeleteResultRequest, DeleteResultResponse, GetResultRequest, LabResult,
};
use tonic::{Request, Response, Status};

struct Labs;

#[tonic::async_trait]
impl LabResults for Labs {
    async fn get_result(
        &self,
        request: Request<GetResultRequest>,
    ) -> Result<Response<LabResult>, Status> {
        if request.get_ref().result_id != phi_guard_labs::RESULT_ID {
            return Err(Status::not_found("no such result"));
        }
        Ok(Response::new(phi_guard_labs::result()))
    }

    async fn delete_result(
        &self,
        request: Request<DeleteResultRequest>,
    ) -> Result<Response<DeleteResultResponse>, Status> {
        // The example deletes nothing; it reports whether the result exists.
        Ok(Response::new(DeleteResultResponse {
            deleted: request.get_ref().result_id == phi_guard_labs::RESULT_ID,
        }))
    }
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let addr: std::net::SocketAddr = std::env::args()
        .nth(1)
        .ok_or("usage: labs-server HOST:PORT")?
        .parse()?;
    let listener = tokio::net::TcpListener::bind(addr).await?;
    println!("labs-server listening on {}", listener.local_addr()?);
    tonic::transport::Server::builder()
        .add_service(LabResultsServer::new(Labs))
        .serve_with_incoming_shutdown(
            tokio_stream::wrappers::TcpListenerStream::new(listener),
            async {
                let _ = tokio::signal::ctrl_c().await;
            },
        )
        .await?;
    Ok(())
}
