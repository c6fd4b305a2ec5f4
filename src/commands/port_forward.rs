//! `flotilla port-forward instance/NAME LOCAL_PORT`: each TCP connection to the
//! local port becomes one stream through the apiserver to the instance's node.

use std::process::ExitCode;

use anyhow::anyhow;
use clap::Args;
use flotilla_client::wire::{read_frame, RequestV1, Response, ResponseV1, MAX_FRAME};

use super::Context;

#[derive(Args, Debug)]
pub struct PortForwardArgs {
    /// instance/NAME.
    target: String,
    /// Local port on 127.0.0.1 (0 picks one).
    local_port: u16,
    /// Namespace.
    #[arg(short, long, default_value = "default")]
    namespace: String,
}

impl PortForwardArgs {
    pub async fn execute(self, ctx: &Context) -> anyhow::Result<ExitCode> {
        let name = self
            .target
            .strip_prefix("instance/")
            .or_else(|| self.target.strip_prefix("inst/"))
            .ok_or_else(|| anyhow!("target: \"{}\" is not instance/NAME", self.target))?
            .to_string();
        let client = ctx.connect().await?;
        let listener = tokio::net::TcpListener::bind(("127.0.0.1", self.local_port)).await?;
        println!(
            "Forwarding from {} -> instance/{name}",
            listener.local_addr()?
        );
        loop {
            let (mut tcp, _) = tokio::select! {
                a = listener.accept() => a?,
                _ = super::server::shutdown_signal() => return Ok(ExitCode::SUCCESS),
            };
            let client = client.clone();
            let (namespace, name) = (self.namespace.clone(), name.clone());
            tokio::spawn(async move {
                let opened = client
                    .node_stream(RequestV1::PortForward { namespace, name })
                    .await;
                let (send, mut recv) = match opened {
                    Ok(s) => s,
                    Err(e) => {
                        eprintln!("error: {e}");
                        return;
                    }
                };
                match read_frame::<_, Response>(&mut recv, MAX_FRAME).await {
                    Ok(Some(Response::V1(ResponseV1::Ok))) => {}
                    Ok(Some(Response::V1(ResponseV1::Error(e)))) => {
                        eprintln!("error: {e}");
                        return;
                    }
                    other => {
                        eprintln!("error: unexpected answer: {other:?}");
                        return;
                    }
                }
                let mut remote = tokio::io::join(recv, send);
                let _ = tokio::io::copy_bidirectional(&mut tcp, &mut remote).await;
            });
        }
    }
}
