//! A network namespace of the test's own, joined to the root namespace by a
//! veth pair, so that a link between a controller and an agent can be cut
//! and restored like a real cable.
//!
//! Addresses are a private /30 in 10.213.0.0/16 that exists only on the two
//! ends of the pair: nothing is routed anywhere else. Every name carries the
//! test process's pid and a counter, so parallel tests (and parallel test
//! runs) never collide. Dropping a [`Link`] deletes the namespace, which
//! deletes the pair with it.
//!
//! Needs root (or CAP_NET_ADMIN and CAP_SYS_ADMIN) and `ip` from iproute2;
//! [`Link::new`] returns `None`, having said why, when they are missing, so
//! the test can skip.

use std::ffi::OsString;
use std::net::Ipv4Addr;
use std::process::Command;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU32, Ordering};

use anyhow::{Context, Result, bail};

/// Numbers the links of this process.
static COUNTER: AtomicU32 = AtomicU32::new(0);

/// Held while a subnet is picked and assigned, so two links of this process
/// never pick the same one.
static PICKING: Mutex<()> = Mutex::new(());

/// A namespace and the veth pair joining it to the root namespace.
#[derive(Debug)]
pub struct Link {
    ns: String,
    host_if: String,
    ns_if: String,
    host_ip: Ipv4Addr,
    ns_ip: Ipv4Addr,
}

/// Runs `ip ARGS...`, failing with its stderr unless it exits 0; returns stdout.
fn ip(args: &[&str]) -> Result<String> {
    let out = Command::new("ip")
        .args(args)
        .output()
        .with_context(|| format!("running ip {}", args.join(" ")))?;
    if !out.status.success() {
        bail!(
            "ip {} exited with {}: {}",
            args.join(" "),
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

impl Link {
    /// Creates the namespace `hop3-e2e-<pid>-<n>`, a veth pair with one end
    /// in it, a free 10.213.X.0/30 with `.1` on the root end and `.2` on the
    /// namespace end, both ends up. `None` (with the reason printed) when
    /// this machine does not let the test do that.
    pub fn new() -> Result<Option<Link>> {
        if !rustix::process::geteuid().is_root() {
            eprintln!("SKIP: network namespaces need root");
            return Ok(None);
        }
        if Command::new("ip").arg("-V").output().is_err() {
            eprintln!("SKIP: `ip` (iproute2) is not installed");
            return Ok(None);
        }
        let pid = std::process::id();
        let n = COUNTER.fetch_add(1, Ordering::Relaxed);
        let ns = format!("hop3-e2e-{pid}-{n}");
        let host_if = format!("h3h{pid}-{n}");
        let ns_if = format!("h3n{pid}-{n}");
        // IFNAMSIZ: 15 characters and a NUL.
        assert!(host_if.len() <= 15 && ns_if.len() <= 15, "{host_if}");
        if let Err(e) = ip(&["netns", "add", &ns]) {
            eprintln!("SKIP: cannot create a network namespace here: {e:#}");
            return Ok(None);
        }
        // From here on, drop removes whatever was made.
        let mut link = Link {
            ns,
            host_if,
            ns_if,
            host_ip: Ipv4Addr::UNSPECIFIED,
            ns_ip: Ipv4Addr::UNSPECIFIED,
        };
        link.wire(pid, n)?;
        Ok(Some(link))
    }

    fn wire(&mut self, pid: u32, n: u32) -> Result<()> {
        let (ns, host_if, ns_if) = (self.ns.clone(), self.host_if.clone(), self.ns_if.clone());
        ip(&[
            "link", "add", &host_if, "type", "veth", "peer", "name", &ns_if,
        ])?;
        ip(&["link", "set", &ns_if, "netns", &ns])?;
        let _picking = PICKING.lock().unwrap_or_else(|e| e.into_inner());
        let x = free_subnet(pid, n)?;
        self.host_ip = Ipv4Addr::new(10, 213, x, 1);
        self.ns_ip = Ipv4Addr::new(10, 213, x, 2);
        ip(&[
            "addr",
            "add",
            &format!("{}/30", self.host_ip),
            "dev",
            &host_if,
        ])?;
        ip(&["link", "set", &host_if, "up"])?;
        self.in_ns(&["addr", "add", &format!("{}/30", self.ns_ip), "dev", &ns_if])?;
        self.in_ns(&["link", "set", &ns_if, "up"])?;
        self.in_ns(&["link", "set", "lo", "up"])?;
        Ok(())
    }

    /// Runs `ip ARGS...` inside the namespace.
    fn in_ns(&self, args: &[&str]) -> Result<String> {
        let mut all = vec!["netns", "exec", &self.ns, "ip"];
        all.extend(args);
        ip(&all)
    }

    /// The namespace's name.
    pub fn ns(&self) -> &str {
        &self.ns
    }

    /// The root namespace's address on the link (`10.213.X.1`).
    pub fn host_ip(&self) -> Ipv4Addr {
        self.host_ip
    }

    /// The namespace's address on the link (`10.213.X.2`).
    pub fn ns_ip(&self) -> Ipv4Addr {
        self.ns_ip
    }

    /// `ip netns exec NS PROGRAM`: the program (`ip`) and the leading
    /// arguments that run `program` inside the namespace. `ip netns exec`
    /// execs the program, so the pid started is the program's own.
    pub fn exec_prefix(&self, program: impl Into<OsString>) -> (OsString, Vec<OsString>) {
        (
            "ip".into(),
            vec![
                "netns".into(),
                "exec".into(),
                self.ns.clone().into(),
                program.into(),
            ],
        )
    }

    /// Cuts the link: sets the namespace's end down. The root end stays up
    /// with its address, so that the root namespace (the CLI talking to a
    /// controller listening there) still reaches it locally.
    pub fn cut(&self) -> Result<()> {
        self.in_ns(&["link", "set", &self.ns_if, "down"])?;
        Ok(())
    }

    /// Restores the link cut by [`cut`](Self::cut).
    pub fn restore(&self) -> Result<()> {
        self.in_ns(&["link", "set", &self.ns_if, "up"])?;
        Ok(())
    }
}

/// A third octet X such that no address of the root namespace, nor any of
/// its routes, is in 10.213.X.0/24 yet: starting from one derived from the
/// pid and counter, so that parallel runs start far apart.
fn free_subnet(pid: u32, n: u32) -> Result<u8> {
    let addrs = ip(&["-o", "-4", "addr", "show"])?;
    let routes = ip(&["-4", "route", "show", "table", "all"])?;
    let start = (pid.wrapping_mul(7).wrapping_add(n.wrapping_mul(31))) % 250;
    for i in 0..250 {
        let x = ((start + i) % 250 + 1) as u8;
        let prefix = format!("10.213.{x}.");
        if !addrs.contains(&prefix) && !routes.contains(&prefix) {
            return Ok(x);
        }
    }
    bail!("no free 10.213.X.0/30 left in the root namespace")
}

impl Drop for Link {
    fn drop(&mut self) {
        // Deleting the namespace deletes the namespace's end of the pair,
        // and with it the root end. Processes still inside keep it alive
        // until they exit, which is why the test drops them first.
        if let Err(e) = ip(&["netns", "del", &self.ns]) {
            eprintln!("cleaning up network namespace {}: {e:#}", self.ns);
        }
        // In case the namespace went but the root end lingers.
        if ip(&["link", "show", &self.host_if]).is_ok() {
            let _ = ip(&["link", "del", &self.host_if]);
        }
    }
}
