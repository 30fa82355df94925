#![cfg(feature = "postgres")]
//! A throwaway PostgreSQL cluster for the `postgres` feature's tests: `initdb` into a temporary
//! directory, a server on a free loopback port (its Unix socket in that directory too), stopped
//! and deleted on drop. The server binaries come from `PATH` or Debian's
//! `/usr/lib/postgresql/<version>/bin`; without them the tests fail (they never skip).

use std::os::unix::fs::MetadataExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

const NOT_FOUND: &str = "PostgreSQL server binaries not found: install them (Debian: apt-get install postgresql) \
                         to run the `postgres` feature's tests";

/// A running (or stopped) cluster of our own.
#[derive(Debug)]
pub struct PgServer {
    ctl: Ctl,
    port: u16,
    running: bool,
}

/// What it takes to run the cluster's programs (no `Drop`: cheap to hand to a blocking task).
#[derive(Debug, Clone)]
struct Ctl {
    bin: PathBuf,
    dir: PathBuf,
    /// The unprivileged user the server runs as when the tests run as root.
    user: Option<(u32, u32)>,
}

impl PgServer {
    /// Creates and starts a new cluster (the blocking work off the runtime's threads).
    pub async fn start() -> PgServer {
        let (ctl, port) = tokio::task::spawn_blocking(Ctl::create).await.expect("starting PostgreSQL");
        PgServer { ctl, port, running: true }
    }

    /// A connection string for the superuser's database.
    pub fn config(&self) -> String {
        format!("host=127.0.0.1 port={} user=postgres dbname=postgres", self.port)
    }

    /// Stops the server at once (`pg_ctl stop -m immediate`: like a crash, no checkpoint).
    pub async fn stop(&mut self) {
        let ctl = self.ctl.clone();
        tokio::task::spawn_blocking(move || ctl.stop()).await.unwrap();
        self.running = false;
    }

    /// Starts the stopped server again, on the same port and data directory.
    pub async fn restart(&mut self) {
        let (ctl, port) = (self.ctl.clone(), self.port);
        let started = tokio::task::spawn_blocking(move || ctl.try_start(port)).await.unwrap();
        assert!(started, "PostgreSQL did not restart:\n{}", self.ctl.log());
        self.running = true;
    }
}

impl Drop for PgServer {
    fn drop(&mut self) {
        if self.running {
            self.ctl.stop();
        }
        let _ = std::fs::remove_dir_all(&self.ctl.dir);
    }
}

impl Ctl {
    /// A new cluster in a new temporary directory, started on a free port.
    fn create() -> (Ctl, u16) {
        static CLUSTERS: AtomicUsize = AtomicUsize::new(0);
        let begun = Instant::now();
        let bin = find_bin_dir().unwrap_or_else(|| panic!("{NOT_FOUND}"));
        let dir = std::env::temp_dir().join(format!(
            "rtr-pg-{}-{}",
            std::process::id(),
            CLUSTERS.fetch_add(1, Ordering::Relaxed)
        ));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        // initdb refuses to run as root (a server running as root could be turned against the
        // whole machine), and CI runs as root: then the cluster belongs to an unprivileged user,
        // `postgres` when Debian's package created it, else `nobody`, and so does its directory.
        let user = if is_root() {
            let (uid, gid) = ["postgres", "nobody"]
                .iter()
                .find_map(|name| lookup_user(name))
                .expect("an unprivileged user (postgres or nobody) to run PostgreSQL as");
            std::os::unix::fs::chown(&dir, Some(uid), Some(gid)).unwrap();
            Some((uid, gid))
        } else {
            None
        };
        let ctl = Ctl { bin, dir, user };
        ctl.run_checked(
            "initdb",
            &["-D", "data", "-U", "postgres", "--auth=trust", "--no-sync", "-E", "UTF8", "--locale=C"],
        );
        // A free port: ask the OS for one, release it, hand it to the server. Another process may
        // take it in between, so try a few.
        for attempt in 0.. {
            let port = free_port();
            if ctl.try_start(port) {
                eprintln!("PostgreSQL cluster on port {port} ready in {:?}", begun.elapsed());
                return (ctl, port);
            }
            assert!(attempt < 5, "PostgreSQL did not start:\n{}", ctl.log());
        }
        unreachable!()
    }

    fn try_start(&self, port: u16) -> bool {
        let options = format!(
            "-p {port} -k {} -c listen_addresses=127.0.0.1 -c fsync=off -c full_page_writes=off",
            self.dir.display()
        );
        let output = self.run("pg_ctl", &["-D", "data", "-l", "server.log", "-w", "-t", "30", "-o", &options, "start"]);
        output.status.success()
    }

    fn stop(&self) {
        self.run_checked("pg_ctl", &["-D", "data", "-m", "immediate", "-w", "stop"]);
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("server.log")).unwrap_or_default()
    }

    fn run(&self, program: &str, args: &[&str]) -> Output {
        let mut command = Command::new(self.bin.join(program));
        command.args(args).current_dir(&self.dir);
        if let Some((uid, gid)) = self.user {
            command.uid(uid).gid(gid).env("HOME", &self.dir);
        }
        command.output().unwrap_or_else(|err| panic!("running {program}: {err}"))
    }

    fn run_checked(&self, program: &str, args: &[&str]) {
        let output = self.run(program, args);
        assert!(
            output.status.success(),
            "{program} failed:\n{}\n{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
    }
}

/// The directory holding `initdb`, `pg_ctl` and `postgres`: on `PATH`, else Debian's newest
/// `/usr/lib/postgresql/<version>/bin`.
fn find_bin_dir() -> Option<PathBuf> {
    let complete = |dir: &Path| ["initdb", "pg_ctl", "postgres"].iter().all(|name| dir.join(name).is_file());
    if let Some(path) = std::env::var_os("PATH")
        && let Some(dir) = std::env::split_paths(&path).find(|dir| complete(dir))
    {
        return Some(dir);
    }
    let mut versions: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .ok()?
        .flatten()
        .filter_map(|entry| Some((entry.file_name().to_str()?.parse().ok()?, entry.path().join("bin"))))
        .collect();
    versions.sort();
    versions.into_iter().rev().map(|(_, dir)| dir).find(|dir| complete(dir))
}

fn is_root() -> bool {
    // /proc/self belongs to the process's effective user.
    std::fs::metadata("/proc/self").map(|meta| meta.uid() == 0).unwrap_or(false)
}

fn lookup_user(name: &str) -> Option<(u32, u32)> {
    let passwd = std::fs::read_to_string("/etc/passwd").ok()?;
    passwd.lines().find_map(|line| {
        let mut fields = line.split(':');
        if fields.next()? != name {
            return None;
        }
        let _password = fields.next()?;
        Some((fields.next()?.parse().ok()?, fields.next()?.parse().ok()?))
    })
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// How long a test took, printed for the record (CI logs show it with `--nocapture`).
pub struct Timer(&'static str, Instant);

impl Timer {
    pub fn start(name: &'static str) -> Timer {
        Timer(name, Instant::now())
    }

    pub fn lap(&self, what: &str) -> Duration {
        let elapsed = self.1.elapsed();
        eprintln!("[{}] {what}: {elapsed:?}", self.0);
        elapsed
    }
}
