//! `flotilla logs INSTANCE`: an instance's output, from its node.

use std::io::Write;
use std::process::ExitCode;

use clap::Args;
use flotilla_client::wire::{read_frame, RequestV1, Response, ResponseV1, MAX_FRAME};

use super::Context;

#[derive(Args, Debug)]
pub struct LogsArgs {
    /// Instance name (or instance/NAME).
    instance: String,
    /// Namespace.
    #[arg(short, long, default_value = "default")]
    namespace: String,
    /// Keep printing new output.
    #[arg(short, long)]
    follow: bool,
    /// Only the last N lines.
    #[arg(long)]
    tail: Option<u64>,
    /// The previous run's output.
    #[arg(short, long)]
    previous: bool,
}

impl LogsArgs {
    pub async fn execute(self, ctx: &Context) -> anyhow::Result<ExitCode> {
        let name = self
            .instance
            .strip_prefix("instance/")
            .or_else(|| self.instance.strip_prefix("inst/"))
            .unwrap_or(&self.instance)
            .to_string();
        let client = ctx.connect().await?;
        let (mut send, mut recv) = client
            .node_stream(RequestV1::Logs {
                namespace: self.namespace.clone(),
                name,
                follow: self.follow,
                tail: self.tail,
                previous: self.previous,
            })
            .await?;
        let _ = send.finish();
        let mut out = std::io::stdout();
        loop {
            match read_frame::<_, Response>(&mut recv, MAX_FRAME).await? {
                Some(Response::V1(ResponseV1::LogChunk(bytes))) => {
                    out.write_all(&bytes)?;
                    out.flush()?;
                }
                Some(Response::V1(ResponseV1::Ok)) | None => break,
                Some(Response::V1(ResponseV1::Error(e))) => anyhow::bail!("{e}"),
                Some(Response::V1(other)) => anyhow::bail!("unexpected answer: {other:?}"),
            }
        }
        Ok(ExitCode::SUCCESS)
    }
}
