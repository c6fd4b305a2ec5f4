//! `--metrics-addr`, shared by every daemon verb (`server`, `node`,
//! `scheduler`, `controllers`, `up`): where the process serves `/metrics`,
//! `/healthz` and `/readyz`.
//!
//! Off by default for the daemons: Kubernetes components serve on fixed
//! ports, but several Flotilla processes often share one host (tests, a
//! cluster on a laptop) and a fixed default would make the second fail to
//! start. `flotilla up`, one process per host by design, serves on
//! [`UP_DEFAULT`] unless told `off`.

use std::net::SocketAddr;

use clap::Args;
use flotilla_telemetry::http::MetricsServer;
use flotilla_telemetry::Telemetry;

/// Where `flotilla up` serves metrics unless told otherwise: clear of
/// Prometheus' own 9090 and node_exporter's 9100 (9464 is the port
/// OpenTelemetry's Prometheus exporters use).
pub const UP_DEFAULT: &str = "127.0.0.1:9464";

/// An address to serve metrics on, or `off`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MetricsAddr(pub Option<SocketAddr>);

/// Parses `HOST:PORT` (an IP address and a port) or `off`.
pub fn parse_metrics_addr(s: &str) -> Result<MetricsAddr, String> {
    let s = s.trim();
    if s.eq_ignore_ascii_case("off") {
        return Ok(MetricsAddr(None));
    }
    s.parse::<SocketAddr>().map(|a| MetricsAddr(Some(a))).map_err(|_| {
        format!(
            "\"{s}\" is not IP:PORT (e.g. 127.0.0.1:9464, 0.0.0.0:9464 for every interface, 127.0.0.1:0 for any free port) or off"
        )
    })
}

/// The flag of the daemon verbs.
#[derive(Args, Debug)]
pub struct MetricsArgs {
    /// Serve Prometheus metrics (/metrics), liveness (/healthz) and
    /// readiness (/readyz) over HTTP on this TCP address; port 0 picks a
    /// free port. Off unless given.
    #[arg(long, value_name = "IP:PORT", value_parser = parse_metrics_addr)]
    metrics_addr: Option<MetricsAddr>,
}

impl MetricsArgs {
    /// Starts serving `telemetry` if the flag asks; `who` names the process
    /// in the line that says where.
    pub async fn serve(
        &self,
        who: &str,
        telemetry: &Telemetry,
    ) -> anyhow::Result<Option<MetricsServer>> {
        let server = serve(self.metrics_addr.and_then(|a| a.0), telemetry).await?;
        if let Some(s) = &server {
            println!("{who}: metrics on http://{}/metrics", s.addr);
        }
        Ok(server)
    }
}

/// Serves `telemetry` on `addr`, if any.
pub async fn serve(
    addr: Option<SocketAddr>,
    telemetry: &Telemetry,
) -> anyhow::Result<Option<MetricsServer>> {
    let Some(addr) = addr else {
        return Ok(None);
    };
    let server = flotilla_telemetry::http::serve(&addr.to_string(), telemetry.clone())
        .await
        .map_err(|e| {
            anyhow::anyhow!(
                "--metrics-addr: {e}; give another address, or 127.0.0.1:0 for any free port"
            )
        })?;
    Ok(Some(server))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_and_off_parse_and_the_rest_is_refused_clearly() {
        assert_eq!(
            parse_metrics_addr("127.0.0.1:0").unwrap(),
            MetricsAddr(Some("127.0.0.1:0".parse().unwrap()))
        );
        assert_eq!(
            parse_metrics_addr("[::1]:9464").unwrap().0.unwrap().port(),
            9464
        );
        assert_eq!(parse_metrics_addr("off").unwrap(), MetricsAddr(None));
        let e = parse_metrics_addr("localhost").unwrap_err();
        assert!(e.contains("\"localhost\" is not IP:PORT"), "{e}");
        assert!(parse_metrics_addr("127.0.0.1:99999").is_err());
    }
}
