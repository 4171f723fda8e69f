//! Machines in network namespaces: a [`Lab`] is a bridge in the test's own namespace and, per
//! [`Host`], a network namespace joined to it by a veth pair, with an address of its own in a
//! private /24. The test reaches every host through the bridge, hosts reach each other through
//! it, and [`Lab::cut`] takes one host's cable out (its veth's bridge end down) so that its
//! traffic stops both ways without any process being told. Everything is removed when the lab
//! is dropped, on panic too.
//!
//! Names carry the test process's id and a per-process counter, so labs of tests running at
//! once (and of other test runs) never share a name.

use std::net::{IpAddr, Ipv4Addr};
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::OnceLock;

use super::Host;

/// Where `ip netns add` puts a namespace's handle.
const NETNS_DIR: &str = "/run/netns";
/// First two octets of every lab's /24 (10.213.N.0/24): private, and away from the usual
/// Docker and libvirt ranges.
const SUBNET_PREFIX: [u8; 2] = [10, 213];
/// Host byte of the bridge's own address, which the test process talks from.
const BRIDGE_HOST: u8 = 254;
/// Labs made by this process so far, for unique names.
static LABS: AtomicU32 = AtomicU32::new(0);

/// The handle of network namespace `name`, which [`Host::enter`] joins.
pub fn netns_path(name: &str) -> PathBuf {
    PathBuf::from(NETNS_DIR).join(name)
}

/// Runs `ip ARGS`; its complaint when it fails.
fn ip(args: &[&str]) -> Result<(), String> {
    let out = Command::new("ip")
        .args(args)
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("running ip: {e}"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "ip {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

/// Runs `ip ARGS` and panics with its complaint when it fails.
fn must(args: &[&str]) {
    if let Err(e) = ip(args) {
        panic!("{e}");
    }
}

/// One host of a lab.
struct LabHost {
    /// Its network namespace.
    netns: String,
    /// The bridge end of its veth pair: the cable [`Lab::cut`] pulls.
    veth: String,
}

/// A bridge and the network namespaces joined to it; removed on drop.
pub struct Lab {
    /// Prefix of every name this lab made.
    tag: String,
    /// The bridge.
    bridge: String,
    /// The lab's /24, as its first three octets.
    subnet: [u8; 3],
    /// The hosts, in the order made (host n has address .n+1).
    hosts: Vec<LabHost>,
}

impl Lab {
    /// Why network namespaces cannot be used here (not root, no `ip`, no netns support), or
    /// nothing when they can: the tests skip with this reason.
    pub fn unavailable() -> Option<String> {
        static PROBED: OnceLock<Option<String>> = OnceLock::new();
        PROBED.get_or_init(probe).clone()
    }

    /// A lab with a bridge and no hosts yet.
    pub fn new() -> Self {
        let n = LABS.fetch_add(1, Ordering::Relaxed);
        let pid = std::process::id();
        // Interface names hold at most 15 bytes: `t`, the pid (≤ 7 digits), `l`, the lab.
        let tag = format!("t{pid}l{n}");
        let subnet = free_subnet(pid.wrapping_add(n.wrapping_mul(37)));
        let lab = Self {
            bridge: format!("{tag}br"),
            tag,
            subnet,
            hosts: Vec::new(),
        };
        must(&["link", "add", &lab.bridge, "type", "bridge"]);
        let bridge_addr = format!("{}/24", lab.address(BRIDGE_HOST));
        must(&["addr", "add", &bridge_addr, "dev", &lab.bridge]);
        must(&["link", "set", &lab.bridge, "up"]);
        lab
    }

    /// Address `host` of the lab's /24.
    fn address(&self, host: u8) -> Ipv4Addr {
        let [a, b, c] = self.subnet;
        Ipv4Addr::new(a, b, c, host)
    }

    /// A new host: a network namespace with loopback and one interface on the bridge.
    pub fn host(&mut self, label: &str) -> Host {
        let i = self.hosts.len();
        let ip = self.address(u8::try_from(i + 1).expect("fewer than 254 hosts"));
        let host = LabHost {
            netns: format!("tariff-{}-{label}", self.tag),
            veth: format!("{}h{i}", self.tag),
        };
        must(&["netns", "add", &host.netns]);
        // Recorded before the links exist, so a failure below still removes the namespace.
        self.hosts.push(host);
        let host = &self.hosts[i];
        let ns = host.netns.as_str();
        must(&[
            "link", "add", &host.veth, "type", "veth", "peer", "name", "eth0", "netns", ns,
        ]);
        must(&["link", "set", &host.veth, "master", &self.bridge, "up"]);
        must(&["-n", ns, "addr", "add", &format!("{ip}/24"), "dev", "eth0"]);
        must(&["-n", ns, "link", "set", "eth0", "up"]);
        must(&["-n", ns, "link", "set", "lo", "up"]);
        Host {
            netns: Some(host.netns.clone()),
            ip: IpAddr::V4(ip),
        }
    }

    fn lab_host(&self, host: &Host) -> &LabHost {
        self.hosts
            .iter()
            .find(|h| Some(&h.netns) == host.netns.as_ref())
            .expect("a host of this lab")
    }

    /// Cuts `host` off: its veth's bridge end goes down, so nothing reaches it or leaves it
    /// and no process on either side is told.
    pub fn cut(&self, host: &Host) {
        must(&["link", "set", &self.lab_host(host).veth, "down"]);
    }

    /// Plugs `host` back in.
    pub fn restore(&self, host: &Host) {
        must(&["link", "set", &self.lab_host(host).veth, "up"]);
    }
}

/// Tries to make (and remove) a network namespace; why that failed.
fn probe() -> Option<String> {
    // SAFETY: geteuid has no preconditions and no memory effects.
    if unsafe { libc::geteuid() } != 0 {
        return Some("network namespaces need root".into());
    }
    let probe = format!("tariff-probe-{}", std::process::id());
    if let Err(e) = ip(&["netns", "add", &probe]) {
        return Some(format!("`ip netns` is unavailable: {e}"));
    }
    let _ = ip(&["netns", "del", &probe]);
    None
}

/// A /24 under [`SUBNET_PREFIX`] that no interface of this namespace has an address in,
/// starting the search at `seed`.
fn free_subnet(seed: u32) -> [u8; 3] {
    let addresses = Command::new("ip")
        .args(["-4", "-o", "addr", "show"])
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
        .unwrap_or_default();
    let [a, b] = SUBNET_PREFIX;
    (0..250u32)
        .map(|k| (seed.wrapping_add(k) % 250) as u8)
        .map(|c| [a, b, c])
        .find(|[a, b, c]| !addresses.contains(&format!(" {a}.{b}.{c}.")))
        .expect("a free 10.213.N.0/24")
}

impl Drop for Lab {
    /// Removes the veth pairs (which takes their namespace ends along at once, where deleting
    /// a namespace frees its interfaces only later), the namespaces and the bridge. Failures
    /// are reported, not raised: a drop may run while a test is already failing.
    fn drop(&mut self) {
        for host in &self.hosts {
            let _ = ip(&["link", "del", &host.veth]);
            if let Err(e) = ip(&["netns", "del", &host.netns]) {
                eprintln!("cleaning up: {e}");
            }
        }
        if let Err(e) = ip(&["link", "del", &self.bridge]) {
            eprintln!("cleaning up: {e}");
        }
    }
}
