//! Hosts of the tests' own: Linux network namespaces joined by veth pairs to one bridge, for the
//! faults a loopback proxy cannot make — a path that drops packets silently (no RST, as a cloud
//! network, a dead NAT entry or a stuck node does), a partitioned cluster node.
//!
//! Each [`TestNet`] has its own bridge and /24 from 198.18.0.0/15 (RFC 2544's range for
//! benchmarking network devices, never a real host), and the test process reaches every host
//! through the bridge's `.1`. Traffic stays on this machine: only to addresses of namespaces made
//! here. Faults are `iptables` rules inside a host's namespace. Dropping the net deletes its
//! namespaces (and with them their veth ends) and its bridge; namespaces left by a test process
//! that died are removed by the next one. Without the privileges or the tools, building a net
//! panics with what is missing: a fault test never skips.

use std::net::Ipv4Addr;
use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};

/// Prefix of every namespace a test net makes: `srt-<pid>-<net>-<host>`.
const NS_PREFIX: &str = "srt-";
/// Prefix of every bridge: `srb<pid, 6 hex><net, 2 hex>`.
const BRIDGE_PREFIX: &str = "srb";

static NEXT_NET: AtomicU32 = AtomicU32::new(0);

/// A namespace of the net.
#[derive(Debug, Clone)]
pub struct Host {
    /// The namespace (`ip netns exec <ns> ...`).
    pub ns: String,
    pub addr: Ipv4Addr,
}

/// A bridge and the namespaces on it.
pub struct TestNet {
    bridge: String,
    tag: String,
    prefix: [u8; 3],
    hosts: Vec<Host>,
}

/// Runs `ip`/`iptables` with `args`; panics with its stderr if it fails.
fn run(program: &str, args: &[&str]) {
    let out = Command::new(tool(program))
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("cannot run {program}: {e}"));
    assert!(
        out.status.success(),
        "{program} {} failed: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr).trim()
    );
}

/// The absolute path of a system tool (`ip`, `iptables`), wherever Debian puts it; the tests'
/// children run with a cleared environment, so no PATH lookup happens there.
pub fn tool(name: &str) -> String {
    for dir in ["/usr/sbin", "/sbin", "/usr/bin", "/bin"] {
        let path = format!("{dir}/{name}");
        if std::path::Path::new(&path).is_file() {
            return path;
        }
    }
    panic!("{name} is not installed: `make test` installs iproute2 and iptables (apt-get install iproute2 iptables)");
}

fn alive(pid: u32) -> bool {
    std::path::Path::new(&format!("/proc/{pid}")).exists()
}

/// Removes namespaces and bridges of test processes that are gone.
fn remove_stale() {
    let Ok(out) = Command::new(tool("ip")).args(["netns", "list"]).output() else {
        return;
    };
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        let name = line.split_whitespace().next().unwrap_or_default();
        let pid = name
            .strip_prefix(NS_PREFIX)
            .and_then(|rest| rest.split('-').next())
            .and_then(|pid| pid.parse::<u32>().ok());
        if pid.is_some_and(|pid| !alive(pid)) {
            let _ = Command::new(tool("ip"))
                .args(["netns", "del", name])
                .status();
        }
    }
    let Ok(out) = Command::new(tool("ip"))
        .args(["-o", "link", "show", "type", "bridge"])
        .output()
    else {
        return;
    };
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        let name = line
            .split(':')
            .nth(1)
            .map(str::trim)
            .unwrap_or_default()
            .to_owned();
        let pid = name
            .strip_prefix(BRIDGE_PREFIX)
            .filter(|rest| rest.len() == 8)
            .and_then(|rest| u32::from_str_radix(&rest[..6], 16).ok());
        if pid.is_some_and(|pid| !alive(pid)) {
            let _ = Command::new(tool("ip"))
                .args(["link", "del", &name])
                .status();
        }
    }
}

impl TestNet {
    /// A new bridge with the test process on it (`.1`); panics with what is missing when this
    /// machine cannot make namespaces.
    pub fn new() -> TestNet {
        remove_stale();
        let pid = std::process::id();
        let n = NEXT_NET.fetch_add(1, Ordering::Relaxed);
        let tag = format!("{:06x}{:02x}", pid & 0xff_ffff, n & 0xff);
        let bridge = format!("{BRIDGE_PREFIX}{tag}");
        // 512 /24s in 198.18.0.0/15, picked by process and net.
        let k = (pid.wrapping_mul(31).wrapping_add(n)) % 512;
        let prefix = [198, 18 + (k / 256) as u8, (k % 256) as u8];
        let net = TestNet {
            bridge: bridge.clone(),
            tag,
            prefix,
            hosts: Vec::new(),
        };
        let status = Command::new(tool("ip"))
            .args(["link", "add", &bridge, "type", "bridge"])
            .output();
        match status {
            Ok(out) if out.status.success() => {}
            Ok(out) => panic!(
                "cannot make a bridge for the network-fault tests ({}); they need root (CAP_NET_ADMIN)",
                String::from_utf8_lossy(&out.stderr).trim()
            ),
            Err(e) => panic!("cannot run ip: {e}"),
        }
        let gateway = net.addr(1);
        run(
            "ip",
            &["addr", "add", &format!("{gateway}/24"), "dev", &bridge],
        );
        run("ip", &["link", "set", &bridge, "up"]);
        net
    }

    fn addr(&self, last: u8) -> Ipv4Addr {
        Ipv4Addr::new(self.prefix[0], self.prefix[1], self.prefix[2], last)
    }

    /// A new namespace on the bridge, called `name` (in its namespace's name, for a reader).
    pub fn host(&mut self, name: &str) -> Host {
        let i = self.hosts.len() + 1;
        let ns = format!("{NS_PREFIX}{}-{}-{name}", std::process::id(), self.tag);
        let addr = self.addr(1 + i as u8);
        let outside = format!("srv{}{i:x}", self.tag);
        let inside = format!("sri{}{i:x}", self.tag);
        run("ip", &["netns", "add", &ns]);
        let host = Host { ns, addr };
        self.hosts.push(host.clone());
        run(
            "ip",
            &[
                "link", "add", &outside, "type", "veth", "peer", "name", &inside, "netns", &host.ns,
            ],
        );
        run("ip", &["link", "set", &outside, "master", &self.bridge]);
        run("ip", &["link", "set", &outside, "up"]);
        let in_ns = |args: &[&str]| {
            let mut all = vec!["netns", "exec", &host.ns, "ip"];
            all.extend_from_slice(args);
            run("ip", &all);
        };
        in_ns(&["addr", "add", &format!("{addr}/24"), "dev", &inside]);
        in_ns(&["link", "set", &inside, "up"]);
        in_ns(&["link", "set", "lo", "up"]);
        host
    }

    /// The test process's own address on the bridge.
    pub fn gateway(&self) -> Ipv4Addr {
        self.addr(1)
    }

    /// Drops every packet between `host` and `peer`, both ways, silently (no reset): inside
    /// `host`'s namespace, so the rest of the net is untouched.
    pub fn cut(&self, host: &Host, peer: Ipv4Addr) {
        let peer = peer.to_string();
        iptables(&host.ns, &["-I", "INPUT", "-s", &peer, "-j", "DROP"]);
        iptables(&host.ns, &["-I", "OUTPUT", "-d", &peer, "-j", "DROP"]);
    }

    /// Removes what [`TestNet::cut`] added.
    pub fn heal(&self, host: &Host, peer: Ipv4Addr) {
        let peer = peer.to_string();
        iptables(&host.ns, &["-D", "INPUT", "-s", &peer, "-j", "DROP"]);
        iptables(&host.ns, &["-D", "OUTPUT", "-d", &peer, "-j", "DROP"]);
    }
}

impl Host {
    /// Makes `command`'s process start inside this host's namespace (`setns(2)` between fork
    /// and exec), so it keeps its own pid for signals.
    pub fn enter(&self, command: &mut tokio::process::Command) {
        use std::os::fd::AsRawFd;
        let path = format!("/var/run/netns/{}", self.ns);
        let ns = std::fs::File::open(&path).unwrap_or_else(|e| panic!("open {path}: {e}"));
        // SAFETY: the closure runs in the forked child before exec and only calls setns(2)
        // on a descriptor opened above (kept open by the closure until then).
        unsafe {
            command.pre_exec(move || {
                if libc::setns(ns.as_raw_fd(), libc::CLONE_NEWNET) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
    }
}

impl Default for TestNet {
    fn default() -> Self {
        Self::new()
    }
}

fn iptables(ns: &str, rule: &[&str]) {
    let iptables = tool("iptables");
    let mut args = vec!["netns", "exec", ns, iptables.as_str(), "-w"];
    args.extend_from_slice(rule);
    run("ip", &args);
}

impl Drop for TestNet {
    fn drop(&mut self) {
        for host in &self.hosts {
            let _ = Command::new(tool("ip"))
                .args(["netns", "del", &host.ns])
                .status();
        }
        let _ = Command::new(tool("ip"))
            .args(["link", "del", &self.bridge])
            .status();
    }
}
