//! A bench binary running itself again as a child process with a role ([`ROLE`]), and the
//! guarantees that the child never outlives the bench.
//!
//! # Why it cannot outlive the bench
//!
//! The parent kills the child when it drops its [`Child`] (a bench that ends or panics). A bench
//! that dies without unwinding (an abort, SIGKILL, a crash) runs no destructor, but the kernel
//! closes its end of the child's stdin: the child watches stdin ([`exit_when_stdin_closes`]) and
//! exits at end of file. Either way no server is left behind.

use std::io::{BufRead as _, BufReader, Read as _};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

/// The environment variable that tells a bench binary which child it is.
pub const ROLE: &str = "RTR_BENCH_ROLE";

/// How long a child has to print its first line.
const READY_TIMEOUT: Duration = Duration::from_secs(30);

/// This process's role, when it is a bench's child.
pub fn role() -> Option<String> {
    std::env::var(ROLE).ok().filter(|role| !role.is_empty())
}

/// In a child: exits the process once its stdin reaches end of file, which happens when the bench
/// that started it is gone.
pub fn exit_when_stdin_closes() {
    std::thread::spawn(|| {
        let mut sink = [0u8; 64];
        let mut stdin = std::io::stdin().lock();
        while matches!(stdin.read(&mut sink), Ok(n) if n > 0) {}
        std::process::exit(0);
    });
}

/// A child process of the bench, killed when dropped.
#[derive(Debug)]
pub struct Child {
    process: std::process::Child,
}

impl Child {
    /// Runs this bench binary again with [`ROLE`] set to `role` and `envs`, its stdin a pipe that
    /// stays open while the returned [`Child`] lives, and waits (at most 30 s) for the first line
    /// it prints, which it returns.
    ///
    /// # Panics
    ///
    /// When the child cannot be started, exits, or prints nothing in time.
    pub fn spawn(role: &str, envs: &[(&str, String)]) -> (Child, String) {
        let exe = std::env::current_exe().expect("the bench binary's path");
        let mut process = Command::new(exe)
            .env(ROLE, role)
            .envs(envs.iter().map(|(name, value)| (name, value)))
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap_or_else(|e| panic!("start the bench's {role} child: {e}"));
        let stdout = process.stdout.take().expect("the child's stdout is piped");
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            let mut line = String::new();
            let read = BufReader::new(stdout).read_line(&mut line);
            let _ = tx.send(read.map(|_| line));
        });
        // Owned from here on, so that a panic below still kills it.
        let child = Child { process };
        let line = match rx.recv_timeout(READY_TIMEOUT) {
            Ok(Ok(line)) if !line.is_empty() => line.trim_end().to_owned(),
            Ok(Ok(_)) => panic!("the bench's {role} child exited before it was ready"),
            Ok(Err(e)) => panic!("read the bench's {role} child's first line: {e}"),
            Err(_) => panic!("the bench's {role} child printed nothing within {READY_TIMEOUT:?}"),
        };
        (child, line)
    }
}

impl Drop for Child {
    fn drop(&mut self) {
        // SIGKILL: `wait` below returns at once.
        let _ = self.process.kill();
        let _ = self.process.wait();
    }
}
