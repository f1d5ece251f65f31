//! The in-cluster route to the API server: a TCP relay listening on `10.96.0.1:<port>`
//! in the root namespace (the address lives on the node's sink veth, so it is reachable
//! from pods and vanishes with the node), forwarding bytes unchanged to the API server,
//! which listens on loopback only. TLS passes through: clients verify the API server's
//! certificate, which names `10.96.0.1`.

use std::net::{SocketAddr, SocketAddrV4};

use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;

use crate::error::{Result, SimNodeError};
use crate::network::API_SERVICE_IP;

/// The running relay.
#[derive(Debug)]
pub(crate) struct ApiProxy {
    pub(crate) port: u16,
    task: JoinHandle<()>,
}

impl ApiProxy {
    /// Binds a random port on `10.96.0.1` and relays each connection to `api_server_url`.
    pub(crate) async fn start(api_server_url: &str) -> Result<Self> {
        let target = target_addr(api_server_url).await?;
        let listener = TcpListener::bind(SocketAddrV4::new(API_SERVICE_IP, 0))
            .await
            .map_err(|e| {
                SimNodeError::io(format!("binding the API proxy on {API_SERVICE_IP}"), e)
            })?;
        let port = listener
            .local_addr()
            .map_err(|e| SimNodeError::io("reading the API proxy's port", e))?
            .port();
        let task = tokio::spawn(async move {
            loop {
                let Ok((mut inbound, _)) = listener.accept().await else {
                    // Out of descriptors, say: do not spin.
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                    continue;
                };
                tokio::spawn(async move {
                    if let Ok(mut outbound) = TcpStream::connect(target).await {
                        let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
                    }
                });
            }
        });
        Ok(Self { port, task })
    }

    /// Stops accepting; open connections end with the runtime.
    pub(crate) fn stop(self) {
        self.task.abort();
    }
}

async fn target_addr(url: &str) -> Result<SocketAddr> {
    let parsed = reqwest::Url::parse(url)
        .map_err(|e| SimNodeError::Config(format!("api_server_url {url:?}: {e}")))?;
    let host = parsed
        .host_str()
        .ok_or_else(|| SimNodeError::Config(format!("api_server_url {url:?} has no host")))?
        .trim_start_matches('[')
        .trim_end_matches(']')
        .to_owned();
    let port = parsed.port_or_known_default().unwrap_or(443);
    let mut addrs = tokio::net::lookup_host((host.as_str(), port))
        .await
        .map_err(|e| SimNodeError::io(format!("resolving {host}"), e))?;
    addrs
        .next()
        .ok_or_else(|| SimNodeError::Config(format!("{host} resolves to nothing")))
}
