//! gRPC health (`grpc.health.v1`: the server, a service, `model/<id>`)
//! and `/readyz` on the admin port; `--wait` polls until the models serve.

use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tonic::Code;
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;

use crate::conn::{Call, code_name, connect, show};

#[derive(Debug, clap::Args)]
pub(crate) struct HealthArgs {
    /// The admin port, HOST:PORT.
    #[arg(long, default_value = "127.0.0.1:9090")]
    admin: String,
    /// Model ids (repeatable).
    #[arg(long)]
    model: Vec<String>,
    /// Poll until every --model is SERVING and /readyz is 200 (within
    /// --deadline).
    #[arg(long)]
    wait: bool,
}

type Health = HealthClient<tonic::transport::Channel>;

async fn check(h: &mut Health, call: &Call, service: &str) -> Result<String, tonic::Status> {
    let req = call.request(HealthCheckRequest {
        service: service.into(),
    })?;
    let r = call.within(h.check(req)).await?.into_inner();
    Ok(ServingStatus::try_from(r.status)
        .map_or("?", |s| s.as_str_name())
        .to_owned())
}

/// GET /readyz: (status, body).
async fn readyz(admin: &str, call: &Call) -> Result<(u16, String), String> {
    let io = async {
        let mut s = tokio::net::TcpStream::connect(admin).await?;
        s.write_all(b"GET /readyz HTTP/1.1\r\nHost: sidecar\r\nConnection: close\r\n\r\n")
            .await?;
        let mut out = Vec::new();
        s.take(64 << 10).read_to_end(&mut out).await?;
        Ok::<_, std::io::Error>(out)
    };
    let out = tokio::time::timeout_at(call.end(), io)
        .await
        .map_err(|_| "readyz: deadline".to_owned())?
        .map_err(|e| format!("readyz {admin}: {e}"))?;
    let text = String::from_utf8_lossy(&out);
    let code = text
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let body = text
        .split("\r\n\r\n")
        .nth(1)
        .unwrap_or("")
        .trim()
        .to_owned();
    Ok((code, body))
}

pub(crate) async fn run(target: &str, call: &Call, a: HealthArgs) -> Result<(), String> {
    let mut h = HealthClient::new(connect(target).await?);
    if a.wait {
        let mut delay = Duration::from_millis(50);
        loop {
            let mut all = true;
            for m in &a.model {
                // Not up yet (UNAVAILABLE) or not registered yet
                // (NOT_FOUND): keep polling within the deadline.
                all &= match check(&mut h, call, &format!("model/{m}")).await {
                    Ok(s) => s == "SERVING",
                    Err(e) if matches!(e.code(), Code::Unavailable | Code::NotFound) => false,
                    Err(e) => return Err(show(&e)),
                };
            }
            if all
                && readyz(&a.admin, call)
                    .await
                    .is_ok_and(|(code, _)| code == 200)
            {
                break;
            }
            call.remaining().map_err(|e| show(&e))?;
            tokio::time::sleep(delay).await;
            delay = (delay * 2).min(Duration::from_secs(1));
        }
    }
    let mut services = vec![String::new(), "sidecar.v1.TextService".to_owned()];
    services.extend(a.model.iter().map(|m| format!("model/{m}")));
    for s in &services {
        let st = check(&mut h, call, s).await.map_err(|e| show(&e))?;
        println!("health {}: {st}", if s.is_empty() { "(server)" } else { s });
    }
    match check(&mut h, call, "model/no-such-model").await {
        Err(e) => println!("health model/no-such-model: {}", code_name(e.code())),
        Ok(s) => return Err(format!("an unknown model is {s}")),
    }
    let (code, body) = readyz(&a.admin, call).await?;
    println!("readyz: {code} {body}");
    if code != 200 {
        return Err(format!("readyz answered {code}"));
    }
    Ok(())
}
