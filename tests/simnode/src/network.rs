//! Pod networking with nothing to leave behind.
//!
//! Each pod's network namespace is owned by a *holder* process (`unshare --net --uts
//! --ipc` running `sleep infinity`, under a parent-death signal) instead of a named
//! namespace (`ip netns add` would leave a bind mount behind). The veth pair is created
//! with its peer directly inside the namespace (`peer name eth0 netns <pid>`), so no
//! moment exists where both ends sit in the root namespace. When every process of the
//! namespace has died, the kernel frees it and both veth ends, their addresses and the
//! /32 route go with it: even a SIGKILL of the test process leaves nothing.
//!
//! Addressing, Calico style: the pod has its IP as /32 on `eth0`, a link route to the
//! gateway `169.254.1.1` and routes for `10.244.0.0/16` (other pods) and `10.96.0.1` (the
//! API proxy) via it. The host side has `169.254.1.1/32`, `proxy_arp=1`,
//! `forwarding=1` and a /32 route to the pod IP. Pods get no default route and only the
//! pod veths forward, so no packet from a pod can leave for the outside world; the global
//! `net.ipv4.ip_forward` is left untouched.
//!
//! One *sink* namespace per [`crate::SimNode`], built the same way, carries a
//! `10.244.0.0/16` route (so packets for pod IPs that no longer exist are dropped instead
//! of following the default route out of the machine), the node IPs `10.244.N.1` and the
//! API proxy address `10.96.0.1`.

use std::collections::BTreeSet;
use std::net::Ipv4Addr;
use std::os::linux::net::SocketAddrExt;
use std::os::unix::net::{SocketAddr, UnixListener};
use std::path::Path;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use tokio::process::Child;

use crate::error::{Result, SimNodeError};
use crate::procfs;
use crate::spawner::{ProcSpec, Spawner};

/// The pods' default gateway, as seen from inside a pod.
pub(crate) const GATEWAY: Ipv4Addr = Ipv4Addr::new(169, 254, 1, 1);
/// Where pods reach the API server: the `kubernetes` Service's ClusterIP, which the API
/// server's serving certificate names.
pub(crate) const API_SERVICE_IP: Ipv4Addr = Ipv4Addr::new(10, 96, 0, 1);
/// All pod networks of every simulated node live in here.
pub(crate) const POD_SUPERNET: &str = "10.244.0.0/16";

const IP: &str = "/usr/sbin/ip";
const NSENTER: &str = "/usr/bin/nsenter";
const UNSHARE: &str = "/usr/bin/unshare";
const CMD_TIMEOUT: Duration = Duration::from_secs(20);
/// How long the kernel may take to free a namespace after its last process died.
const VETH_GONE_TIMEOUT: Duration = Duration::from_secs(10);

/// A host-side veth name: `dv` and 8 hex digits (what the leftover checker looks for).
pub(crate) fn veth_name() -> String {
    format!("dv{:08x}", rand::random::<u32>())
}

/// One route of `ip -4 route show table all`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct RouteEntry {
    pub(crate) net: Ipv4Addr,
    pub(crate) len: u8,
    pub(crate) dev: Option<String>,
}

/// Parses `ip -4 route show table all` output; lines it does not understand are skipped.
pub(crate) fn parse_routes(text: &str) -> Vec<RouteEntry> {
    const TYPES: [&str; 10] = [
        "unicast",
        "local",
        "broadcast",
        "multicast",
        "blackhole",
        "unreachable",
        "prohibit",
        "throw",
        "anycast",
        "nat",
    ];
    text.lines()
        .filter_map(|line| {
            let mut tokens = line.split_whitespace().peekable();
            if tokens.peek().is_some_and(|t| TYPES.contains(t)) {
                tokens.next();
            }
            let prefix = tokens.next()?;
            let (net, len) = if prefix == "default" {
                (Ipv4Addr::UNSPECIFIED, 0)
            } else {
                match prefix.split_once('/') {
                    Some((ip, len)) => (ip.parse().ok()?, len.parse().ok()?),
                    None => (prefix.parse().ok()?, 32),
                }
            };
            let rest: Vec<&str> = tokens.collect();
            let dev = rest
                .windows(2)
                .find(|w| w[0] == "dev")
                .map(|w| w[1].to_owned());
            Some(RouteEntry { net, len, dev })
        })
        .collect()
}

fn mask(len: u8) -> u32 {
    if len == 0 {
        0
    } else {
        u32::MAX << (32 - u32::from(len.min(32)))
    }
}

/// Whether `10.244.<third>.0/24` overlaps a route, ignoring the default route and the
/// `10.244.0.0/16` sinks of other simulated nodes (they only catch what no /32 matches).
pub(crate) fn cidr_in_use(third: u8, routes: &[RouteEntry]) -> bool {
    let ours = u32::from(Ipv4Addr::new(10, 244, third, 0));
    routes.iter().any(|r| {
        if r.len == 0 {
            return false;
        }
        if r.len < 24 && r.dev.as_deref().is_some_and(|d| d.starts_with("dv")) {
            return false;
        }
        let m = mask(r.len.min(24));
        (u32::from(r.net) & m) == (ours & m)
    })
}

/// The pod network of one node: its /24, the lock that keeps other simulated nodes on
/// this machine off it, and the addresses handed out.
#[derive(Debug)]
pub(crate) struct NodeNet {
    pub(crate) node: String,
    third: u8,
    /// An abstract Unix socket named after the /24: held while this node lives, gone with
    /// the process, so two test processes never pick the same /24.
    _lock: UnixListener,
    used: Mutex<BTreeSet<u8>>,
}

impl NodeNet {
    /// `10.244.N.0/24`.
    pub(crate) fn cidr(&self) -> String {
        format!("10.244.{}.0/24", self.third)
    }

    /// The node's own address `10.244.N.1` (on the sink): its `InternalIP` and pods'
    /// `hostIP`.
    pub(crate) fn node_ip(&self) -> Ipv4Addr {
        Ipv4Addr::new(10, 244, self.third, 1)
    }

    /// A free pod IP in `10.244.N.2-254`: the first above the highest in use, wrapping
    /// around, so a new pod rarely gets the address of a pod that just died.
    fn allocate(&self) -> Option<Ipv4Addr> {
        let mut used = self.used.lock().unwrap_or_else(|e| e.into_inner());
        let last = used.last().copied().unwrap_or(1);
        let host = (last.saturating_add(1)..=254)
            .chain(2..=last)
            .find(|h| !used.contains(h))?;
        used.insert(host);
        Some(Ipv4Addr::new(10, 244, self.third, host))
    }

    fn release(&self, ip: Ipv4Addr) {
        self.used
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&ip.octets()[3]);
    }
}

/// Picks a random unused /24 for each node, checked against every routing table and
/// locked against other simulated nodes on this machine.
pub(crate) async fn pick_node_nets(spawner: &Spawner, nodes: &[String]) -> Result<Vec<NodeNet>> {
    let out = spawner
        .run(
            ProcSpec::new(IP, ["-4", "route", "show", "table", "all"]),
            None,
            CMD_TIMEOUT,
        )
        .await?;
    let routes = parse_routes(&String::from_utf8_lossy(&out.stdout));
    let mut candidates: Vec<u8> = (0..=255).collect();
    // Fisher-Yates with the workspace's rand.
    for i in (1..candidates.len()).rev() {
        let j = rand::random_range(0..=i);
        candidates.swap(i, j);
    }
    let mut candidates = candidates.into_iter();
    let mut nets = Vec::new();
    for node in nodes {
        let net = loop {
            let Some(third) = candidates.next() else {
                return Err(SimNodeError::NoPodCidr(node.clone()));
            };
            if cidr_in_use(third, &routes) {
                continue;
            }
            let name = format!("deployctl-simnode/10.244.{third}.0/24");
            let lock = SocketAddr::from_abstract_name(name.as_bytes())
                .and_then(|addr| UnixListener::bind_addr(&addr));
            if let Ok(lock) = lock {
                break NodeNet {
                    node: node.clone(),
                    third,
                    _lock: lock,
                    used: Mutex::new(BTreeSet::new()),
                };
            }
        };
        nets.push(net);
    }
    Ok(nets)
}

/// A process owning fresh namespaces; the namespaces die with it (and with whatever else
/// joined them).
#[derive(Debug)]
struct Holder {
    child: Child,
    pid: u32,
}

impl Holder {
    /// Starts `unshare <flags> sh -c '...; exec sleep infinity'` and waits until it sleeps
    /// in its own network namespace (its hostname is set by then).
    async fn start(spawner: &Spawner, flags: &[&str], hostname: Option<&str>) -> Result<Self> {
        let mut args: Vec<String> = flags.iter().map(|f| (*f).to_owned()).collect();
        args.push("--".into());
        args.push("/bin/sh".into());
        args.push("-c".into());
        match hostname {
            Some(h) => {
                args.push(r#"echo "$0" > /proc/sys/kernel/hostname && exec sleep infinity"#.into());
                args.push(h.to_owned());
            }
            None => args.push("exec sleep infinity".into()),
        }
        let mut child = spawner.spawn(ProcSpec::new(UNSHARE, args)).await?;
        let pid = child.id().ok_or_else(|| SimNodeError::Command {
            what: "namespace holder".into(),
            detail: "exited at once".into(),
        })?;
        let deadline = Instant::now() + CMD_TIMEOUT;
        loop {
            if procfs::comm(pid).as_deref() == Some("sleep") && procfs::has_own_netns(pid) {
                return Ok(Self { child, pid });
            }
            if let Ok(Some(status)) = child.try_wait() {
                return Err(SimNodeError::Command {
                    what: "namespace holder".into(),
                    detail: format!("exited with {status}"),
                });
            }
            if Instant::now() > deadline {
                let _ = child.start_kill();
                return Err(SimNodeError::Timeout {
                    what: "the namespace holder to start".into(),
                    waited: CMD_TIMEOUT,
                });
            }
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
    }

    async fn stop(mut self) {
        let _ = self.child.start_kill();
        let _ = self.child.wait().await;
    }
}

/// Creates the veth pair `name` with its `eth0` end inside `holder`'s namespace and
/// prepares the host end (no IPv6, proxy ARP, forwarding for packets from the pod).
async fn add_veth(spawner: &Spawner, name: &str, holder: u32) -> Result<()> {
    let pid = holder.to_string();
    spawner
        .run(
            ProcSpec::new(
                IP,
                [
                    "link", "add", name, "type", "veth", "peer", "name", "eth0", "netns", &pid,
                ],
            ),
            None,
            CMD_TIMEOUT,
        )
        .await?;
    // IPv6 would only add link-local chatter; failure just means IPv6 is off already.
    let _ = std::fs::write(format!("/proc/sys/net/ipv6/conf/{name}/disable_ipv6"), "1");
    for (key, value) in [("proxy_arp", "1"), ("forwarding", "1")] {
        std::fs::write(format!("/proc/sys/net/ipv4/conf/{name}/{key}"), value)
            .map_err(|e| SimNodeError::io(format!("setting {key} on {name}"), e))?;
    }
    Ok(())
}

async fn ip_batch(spawner: &Spawner, netns_of: Option<u32>, script: &str) -> Result<()> {
    let spec = match netns_of {
        Some(pid) => ProcSpec::new(
            NSENTER,
            [
                format!("--net=/proc/{pid}/ns/net"),
                "--".into(),
                IP.into(),
                "-batch".into(),
                "-".into(),
            ],
        ),
        None => ProcSpec::new(IP, ["-batch", "-"]),
    };
    spawner
        .run(spec, Some(script.as_bytes()), CMD_TIMEOUT)
        .await
        .map(drop)
}

async fn wait_link_gone(name: &str) -> bool {
    let path = format!("/sys/class/net/{name}");
    let deadline = Instant::now() + VETH_GONE_TIMEOUT;
    while Path::new(&path).exists() {
        if Instant::now() > deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    true
}

/// The node-wide sink namespace (see the module docs).
#[derive(Debug)]
pub(crate) struct Sink {
    holder: Holder,
    pub(crate) veth: String,
}

impl Sink {
    /// Builds the sink carrying the node IPs, the gateway and the API proxy address.
    pub(crate) async fn create(spawner: &Spawner, node_ips: &[Ipv4Addr]) -> Result<Self> {
        let holder = Holder::start(spawner, &["--net"], None).await?;
        let veth = veth_name();
        let sink = Self { holder, veth };
        match sink.configure(spawner, node_ips).await {
            Ok(()) => Ok(sink),
            Err(e) => {
                sink.destroy().await;
                Err(e)
            }
        }
    }

    async fn configure(&self, spawner: &Spawner, node_ips: &[Ipv4Addr]) -> Result<()> {
        let veth = &self.veth;
        add_veth(spawner, veth, self.holder.pid).await?;
        let mut script = format!(
            "link set {veth} up\naddr add {GATEWAY}/32 dev {veth}\naddr add {API_SERVICE_IP}/32 dev {veth}\n"
        );
        for ip in node_ips {
            script.push_str(&format!("addr add {ip}/32 dev {veth}\n"));
        }
        ip_batch(spawner, None, &script).await?;
        ip_batch(spawner, Some(self.holder.pid), "link set eth0 up\n").await?;
        // Other simulated nodes on this machine have a sink route too: pick a free metric.
        let mut last_error = None;
        for _ in 0..20 {
            let metric = rand::random_range(1000..60000u32).to_string();
            let add = ProcSpec::new(
                IP,
                [
                    "route",
                    "add",
                    POD_SUPERNET,
                    "dev",
                    veth.as_str(),
                    "metric",
                    metric.as_str(),
                ],
            );
            match spawner.run(add, None, CMD_TIMEOUT).await {
                Ok(_) => return Ok(()),
                Err(e) => last_error = Some(e),
            }
        }
        Err(last_error.unwrap_or_else(|| SimNodeError::Config("no sink route".into())))
    }

    /// Kills the holder and waits until the kernel removed the veth.
    pub(crate) async fn destroy(self) {
        self.holder.stop().await;
        if !wait_link_gone(&self.veth).await {
            tracing::warn!(veth = %self.veth, "sink veth still present");
        }
    }
}

/// A pod's network: its holder process, host veth and IP.
#[derive(Debug)]
pub(crate) struct PodSandbox {
    holder: Holder,
    pub(crate) veth: String,
    pub(crate) ip: Ipv4Addr,
}

impl PodSandbox {
    /// Creates the namespaces (net, uts with `hostname`, ipc), the veth pair and routes.
    pub(crate) async fn create(spawner: &Spawner, net: &NodeNet, hostname: &str) -> Result<Self> {
        let ip = net
            .allocate()
            .ok_or_else(|| SimNodeError::NoPodIp(net.node.clone()))?;
        let holder =
            match Holder::start(spawner, &["--net", "--uts", "--ipc"], Some(hostname)).await {
                Ok(h) => h,
                Err(e) => {
                    net.release(ip);
                    return Err(e);
                }
            };
        let sandbox = Self {
            holder,
            veth: veth_name(),
            ip,
        };
        match sandbox.configure(spawner).await {
            Ok(()) => Ok(sandbox),
            Err(e) => {
                sandbox.destroy(net).await;
                Err(e)
            }
        }
    }

    async fn configure(&self, spawner: &Spawner) -> Result<()> {
        let (veth, ip) = (&self.veth, self.ip);
        add_veth(spawner, veth, self.holder.pid).await?;
        ip_batch(
            spawner,
            None,
            &format!(
                "link set {veth} up\naddr add {GATEWAY}/32 dev {veth}\nroute add {ip}/32 dev {veth} src {GATEWAY}\n"
            ),
        )
        .await?;
        ip_batch(
            spawner,
            Some(self.holder.pid),
            &format!(
                "link set lo up\naddr add {ip}/32 dev eth0\nlink set eth0 up\n\
                 route add {GATEWAY} dev eth0 scope link\n\
                 route add {POD_SUPERNET} via {GATEWAY} dev eth0\n\
                 route add {API_SERVICE_IP}/32 via {GATEWAY} dev eth0\n"
            ),
        )
        .await
    }

    /// The pid whose namespaces containers join.
    pub(crate) fn holder_pid(&self) -> u32 {
        self.holder.pid
    }

    /// Kills the holder, waits until the kernel removed the veth (which happens only once
    /// every process of the pod is gone), and frees the IP.
    pub(crate) async fn destroy(self, net: &NodeNet) {
        self.holder.stop().await;
        if wait_link_gone(&self.veth).await {
            net.release(self.ip);
        } else {
            // Keep the IP out of circulation: something still lives in the namespace.
            tracing::warn!(veth = %self.veth, ip = %self.ip, "pod veth still present");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const ROUTES: &str = "\
default via 192.0.2.1 dev eth0
10.244.0.0/16 dev dv1a2b3c4d scope link metric 1234
10.244.77.2 dev dvaaaa0001 scope link src 169.254.1.1
192.0.2.0/24 dev eth0 proto kernel scope link src 192.0.2.2
unreachable 10.244.9.0/24
local 10.244.12.1 dev dv1a2b3c4d table local proto kernel scope host src 10.244.12.1
broadcast 192.0.2.255 dev eth0 table local proto kernel scope link src 192.0.2.2
10.0.0.0/12 dev eth1
";

    #[test]
    fn parses_route_lines() {
        let routes = parse_routes(ROUTES);
        assert_eq!(routes.len(), 8);
        assert_eq!(
            routes[0],
            RouteEntry {
                net: Ipv4Addr::UNSPECIFIED,
                len: 0,
                dev: Some("eth0".into())
            }
        );
        assert_eq!(routes[2].len, 32);
        assert_eq!(routes[4].dev, None);
        assert_eq!(routes[5].net, Ipv4Addr::new(10, 244, 12, 1));
    }

    #[test]
    fn detects_overlapping_cidrs() {
        let routes = parse_routes(ROUTES);
        assert!(cidr_in_use(77, &routes), "a pod /32 of another node");
        assert!(cidr_in_use(9, &routes), "an unreachable /24");
        assert!(cidr_in_use(12, &routes), "a local address");
        assert!(!cidr_in_use(78, &routes), "only the other node's sink /16");
        let foreign = parse_routes("10.244.0.0/16 dev eth1\n");
        assert!(cidr_in_use(5, &foreign), "a /16 that is not a simnode sink");
        let wide = parse_routes("10.0.0.0/12 dev eth1\n");
        assert!(!cidr_in_use(5, &wide), "10.0.0.0/12 ends at 10.15.255.255");
        assert!(cidr_in_use(5, &parse_routes("10.240.0.0/12 dev eth1\n")));
    }

    #[test]
    fn veth_names_fit_ifnamsiz() {
        let name = veth_name();
        assert!(name.starts_with("dv") && name.len() == 10, "{name}");
        assert!(name[2..].chars().all(|c| c.is_ascii_hexdigit()));
    }

    #[test]
    fn allocates_round_robin() {
        let net = NodeNet {
            node: "n".into(),
            third: 7,
            _lock: UnixListener::bind_addr(
                &SocketAddr::from_abstract_name(
                    format!("simnode-test-{}", rand::random::<u64>()).as_bytes(),
                )
                .expect("addr"),
            )
            .expect("bind"),
            used: Mutex::new(BTreeSet::new()),
        };
        assert_eq!(net.cidr(), "10.244.7.0/24");
        assert_eq!(net.node_ip(), Ipv4Addr::new(10, 244, 7, 1));
        let a = net.allocate().expect("a");
        let b = net.allocate().expect("b");
        assert_eq!(a, Ipv4Addr::new(10, 244, 7, 2));
        assert_eq!(b, Ipv4Addr::new(10, 244, 7, 3));
        net.release(a);
        assert_eq!(net.allocate(), Some(Ipv4Addr::new(10, 244, 7, 4)));
        for _ in 5..=254 {
            assert!(net.allocate().is_some());
        }
        assert_eq!(net.allocate(), Some(a), "wraps to the freed address");
        assert_eq!(net.allocate(), None);
    }
}
