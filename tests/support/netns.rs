//! Network namespaces for tests that shape a real link: a veth pair between the host and
//! a namespace, limits, loss and a black hole on it (`tc`), and a tokio runtime on a thread
//! inside the namespace. Needs root (CAP_NET_ADMIN) and iproute2.
#![allow(dead_code)]

use std::os::fd::AsRawFd;
use std::process::Command;

/// Runs `ip`/`tc` with `args`; panics with the command's stderr when it fails.
pub fn run(cmd: &str, args: &[&str]) {
    let out = Command::new(cmd)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("cannot run {cmd} (iproute2 installed?): {e}"));
    assert!(
        out.status.success(),
        "{cmd} {}: {} (this test needs root/CAP_NET_ADMIN for a network namespace)",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr).trim()
    );
}

/// A network namespace joined to the host by a veth pair; deleted on drop.
pub struct Netns {
    /// Its name (`ip netns`).
    pub name: String,
    /// The host's end of the pair.
    pub host_if: String,
    /// The namespace's end.
    pub ns_if: String,
    /// The host's address on the pair.
    pub host_ip: String,
    /// The namespace's address on the pair.
    pub ns_ip: String,
}

impl Netns {
    /// Creates one with its own name and /30 subnet.
    pub fn create() -> Netns {
        // One name and subnet per namespace of this process (pid and a counter).
        static CREATED: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let k = CREATED.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let pid = std::process::id();
        let net = (pid * 4 + k) % 250 + 1;
        let n = Netns {
            name: format!("sluice-bw-{pid}-{k}"),
            host_if: format!("slbw{}{k}h", pid % 10_000),
            ns_if: format!("slbw{}{k}n", pid % 10_000),
            host_ip: format!("10.231.{net}.1"),
            ns_ip: format!("10.231.{net}.2"),
        };
        let ns_if = n.ns_if.clone();
        // Leftovers of a crashed earlier run with the same pid.
        let _ = Command::new("ip").args(["netns", "del", &n.name]).output();
        let _ = Command::new("ip")
            .args(["link", "del", &n.host_if])
            .output();
        run("ip", &["netns", "add", &n.name]);
        run(
            "ip",
            &[
                "link", "add", &n.host_if, "type", "veth", "peer", "name", &ns_if,
            ],
        );
        run("ip", &["link", "set", &ns_if, "netns", &n.name]);
        run(
            "ip",
            &[
                "addr",
                "add",
                &format!("{}/30", n.host_ip),
                "dev",
                &n.host_if,
            ],
        );
        run("ip", &["link", "set", &n.host_if, "up"]);
        run(
            "ip",
            &[
                "-n",
                &n.name,
                "addr",
                "add",
                &format!("{}/30", n.ns_ip),
                "dev",
                &ns_if,
            ],
        );
        run("ip", &["-n", &n.name, "link", "set", &ns_if, "up"]);
        run("ip", &["-n", &n.name, "link", "set", "lo", "up"]);
        // A default route, or webrtc's multicast DNS socket has no interface (ENODEV).
        run(
            "ip",
            &["-n", &n.name, "route", "add", "default", "via", &n.host_ip],
        );
        n
    }

    /// Limits what the host sends into the namespace to `kbit` kbit/s (a token bucket
    /// with a 60 ms queue: beyond that, packets are dropped).
    pub fn limit(&self, kbit: u32) {
        run(
            "tc",
            &[
                "qdisc",
                "replace",
                "dev",
                &self.host_if,
                "root",
                "tbf",
                "rate",
                &format!("{kbit}kbit"),
                "burst",
                "4kb",
                "latency",
                "60ms",
            ],
        );
    }

    /// Lets nothing through either way (a token bucket of 8 bit/s that holds no packet
    /// above 64 bytes), without taking the link down: the peer goes silent, as a crashed
    /// browser does.
    pub fn black_hole(&self) {
        let hole = [
            "root", "tbf", "rate", "8bit", "burst", "64", "latency", "1ms",
        ];
        let host: Vec<&str> = ["qdisc", "replace", "dev", &self.host_if]
            .into_iter()
            .chain(hole)
            .collect();
        run("tc", &host);
        let inside: Vec<&str> = ["-n", &self.name, "qdisc", "replace", "dev", &self.ns_if]
            .into_iter()
            .chain(hole)
            .collect();
        run("tc", &inside);
    }

    /// Loses 5 % of what the host sends into the namespace, at random. This kernel has
    /// no netem (nor gact actions), so: an HTB root whose default class is unlimited and
    /// whose other class carries 8 bit/s behind a one-packet queue (what goes there is
    /// lost), and a classic-BPF classifier that sends a packet there when the kernel's
    /// per-packet random number (`SKF_AD_RANDOM`) is below 5 % of its range.
    pub fn lossy(&self) {
        let dev = self.host_if.as_str();
        run(
            "tc",
            &[
                "qdisc", "replace", "dev", dev, "root", "handle", "1:", "htb", "default", "1",
            ],
        );
        run(
            "tc",
            &[
                "class", "add", "dev", dev, "parent", "1:", "classid", "1:1", "htb", "rate",
                "1gbit",
            ],
        );
        run(
            "tc",
            &[
                "class", "add", "dev", dev, "parent", "1:", "classid", "1:2", "htb", "rate",
                "8bit", "ceil", "8bit",
            ],
        );
        run(
            "tc",
            &[
                "qdisc", "add", "dev", dev, "parent", "1:2", "pfifo", "limit", "1",
            ],
        );
        // ld rand; jge 5 % of 2^32 → ret 1:1; ret 1:2.
        let threshold = (0.05 * f64::from(u32::MAX)) as u32;
        let prog = format!(
            "4,32 0 0 {},53 1 0 {threshold},6 0 0 {},6 0 0 {}",
            0xffff_f000u32 + 56,
            1 << 16 | 2,
            1 << 16 | 1
        );
        run(
            "tc",
            &[
                "filter", "add", "dev", dev, "parent", "1:", "protocol", "all", "bpf", "bytecode",
                &prog,
            ],
        );
    }

    /// Lifts every limit.
    pub fn unlimit(&self) {
        run("tc", &["qdisc", "del", "dev", &self.host_if, "root"]);
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .output();
        let _ = Command::new("ip")
            .args(["link", "del", &self.host_if])
            .output();
    }
}

/// A single-threaded tokio runtime on a thread inside the namespace: sockets that tasks
/// on it create belong to the namespace.
pub struct NetnsRuntime {
    /// Spawns onto the namespace's thread.
    pub handle: tokio::runtime::Handle,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl NetnsRuntime {
    /// Starts it inside namespace `netns`.
    pub fn start(netns: &str) -> NetnsRuntime {
        let path = format!("/var/run/netns/{netns}");
        let (tx, rx) = std::sync::mpsc::channel();
        let thread = std::thread::spawn(move || {
            let f = std::fs::File::open(&path).expect("namespace handle");
            // SAFETY: setns on a valid namespace fd; it only changes this thread.
            let r = unsafe { libc::setns(f.as_raw_fd(), libc::CLONE_NEWNET) };
            assert_eq!(r, 0, "setns: {}", std::io::Error::last_os_error());
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
            tx.send((rt.handle().clone(), stop_tx)).unwrap();
            rt.block_on(async {
                let _ = stop_rx.await;
            });
        });
        let (handle, stop) = rx.recv().unwrap();
        NetnsRuntime {
            handle,
            stop: Some(stop),
            thread: Some(thread),
        }
    }
}

impl Drop for NetnsRuntime {
    fn drop(&mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}
