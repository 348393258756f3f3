//! Process, port, HTTP and log helpers shared by the lab.

use std::fs::{self, File, OpenOptions};
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

/// Prints a progress line straight to the process's stderr, bypassing the test harness's
/// output capture, so CI logs show what the lab is doing even without `--nocapture`.
pub fn say(msg: impl AsRef<str>) {
    let mut err = std::io::stderr().lock();
    let _ = writeln!(err, "[e2e] {}", msg.as_ref());
    let _ = err.flush();
}

/// Whether the process runs as root (/proc/self is owned by the effective uid).
pub fn is_root() -> bool {
    use std::os::unix::fs::MetadataExt;
    fs::metadata("/proc/self")
        .map(|m| m.uid() == 0)
        .unwrap_or(false)
}

/// A free TCP port on 127.0.0.1 (bound once and released; races are unlikely on a test box).
pub fn free_port() -> u16 {
    let l = TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0 to find a free port");
    l.local_addr().expect("local_addr of probe listener").port()
}

/// Finds `name` on PATH (or accepts an absolute path).
pub fn which(name: &str) -> Option<PathBuf> {
    if name.contains('/') {
        let p = PathBuf::from(name);
        return is_executable(&p).then_some(p);
    }
    let path = std::env::var_os("PATH").unwrap_or_default();
    let mut dirs: Vec<PathBuf> = std::env::split_paths(&path).collect();
    // sbin dirs are not always on a non-login root PATH, but dockerd and nginx live there.
    for extra in ["/usr/local/sbin", "/usr/sbin", "/sbin"] {
        if !dirs.iter().any(|d| d == Path::new(extra)) {
            dirs.push(PathBuf::from(extra));
        }
    }
    dirs.into_iter()
        .map(|d| d.join(name))
        .find(|p| is_executable(p))
}

fn is_executable(p: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    fs::metadata(p)
        .map(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
        .unwrap_or(false)
}

/// Last `n` lines of a (log) file, for failure messages.
pub fn tail(path: &Path, n: usize) -> String {
    match fs::read(path) {
        Ok(bytes) => {
            let text = String::from_utf8_lossy(&bytes);
            let lines: Vec<&str> = text.lines().collect();
            let start = lines.len().saturating_sub(n);
            lines[start..].join("\n")
        }
        Err(e) => format!("<cannot read {}: {e}>", path.display()),
    }
}

/// Number of complete lines currently in a file (0 if it does not exist).
pub fn line_count(path: &Path) -> usize {
    fs::read(path)
        .map(|b| b.iter().filter(|&&c| c == b'\n').count())
        .unwrap_or(0)
}

/// The complete lines of a file after the first `skip` lines.
pub fn lines_after(path: &Path, skip: usize) -> Vec<String> {
    let bytes = fs::read(path).unwrap_or_default();
    let text = String::from_utf8_lossy(&bytes);
    let complete = match text.rfind('\n') {
        Some(i) => &text[..=i],
        None => "",
    };
    complete.lines().skip(skip).map(str::to_owned).collect()
}

/// Output of a finished command.
pub struct Output {
    pub status: ExitStatus,
    pub stdout: String,
    pub stderr: String,
}

impl Output {
    pub fn ok(&self) -> bool {
        self.status.success()
    }
}

/// Renders a command line for logs.
pub fn describe(cmd: &Command) -> String {
    let mut s = cmd.get_program().to_string_lossy().into_owned();
    for a in cmd.get_args() {
        s.push(' ');
        s.push_str(&a.to_string_lossy());
    }
    s
}

/// Runs a command to completion with a deadline; stdout/stderr are collected via temp files
/// (no pipe deadlocks). On timeout the process is killed and the call panics.
pub fn run(cmd: &mut Command, timeout: Duration) -> Output {
    let desc = describe(cmd);
    let dir = tempfile::tempdir().expect("tempdir for command output");
    let out_path = dir.path().join("stdout");
    let err_path = dir.path().join("stderr");
    let out = File::create(&out_path).expect("create stdout capture file");
    let err = File::create(&err_path).expect("create stderr capture file");
    let started = Instant::now();
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(out)
        .stderr(err)
        .spawn()
        .unwrap_or_else(|e| panic!("spawn `{desc}`: {e}"));
    let status = loop {
        if let Some(st) = child.try_wait().expect("try_wait on command") {
            break st;
        }
        if started.elapsed() > timeout {
            let _ = child.kill();
            let _ = child.wait();
            panic!(
                "`{desc}` timed out after {timeout:?}\nstdout:\n{}\nstderr:\n{}",
                tail(&out_path, 40),
                tail(&err_path, 40)
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    Output {
        status,
        stdout: fs::read_to_string(&out_path).unwrap_or_default(),
        stderr: fs::read_to_string(&err_path).unwrap_or_default(),
    }
}

/// Like [`run`], but panics with the full output unless the command succeeds.
pub fn run_ok(cmd: &mut Command, timeout: Duration) -> Output {
    let desc = describe(cmd);
    let started = Instant::now();
    let out = run(cmd, timeout);
    if !out.ok() {
        panic!(
            "`{desc}` failed ({}) after {:.1}s\nstdout:\n{}\nstderr:\n{}",
            out.status,
            started.elapsed().as_secs_f64(),
            out.stdout,
            out.stderr
        );
    }
    out
}

/// A background process whose stdout+stderr go to a log file. Dropping it stops it:
/// SIGTERM, a grace period, then SIGKILL.
pub struct Daemon {
    pub name: String,
    pub log: PathBuf,
    child: Option<Child>,
    grace: Duration,
}

impl Daemon {
    pub fn spawn(name: &str, cmd: &mut Command, log: &Path, grace: Duration) -> Daemon {
        let desc = describe(cmd);
        let file = OpenOptions::new()
            .create(true)
            .append(true)
            .open(log)
            .unwrap_or_else(|e| panic!("open log {}: {e}", log.display()));
        let file2 = file.try_clone().expect("clone log file handle");
        let child = cmd
            .stdin(Stdio::null())
            .stdout(file)
            .stderr(file2)
            .spawn()
            .unwrap_or_else(|e| panic!("spawn {name} (`{desc}`): {e}"));
        say(format!(
            "started {name} pid {} (log {}): {desc}",
            child.id(),
            log.display()
        ));
        Daemon {
            name: name.to_owned(),
            log: log.to_owned(),
            child: Some(child),
            grace,
        }
    }

    /// The process id (None once stopped).
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// Sends `signal` (a `kill` name, e.g. `HUP`) to the process.
    pub fn signal(&self, signal: &str) {
        let pid = self
            .pid()
            .unwrap_or_else(|| panic!("{} is not running", self.name));
        let st = Command::new("kill")
            .arg(format!("-{signal}"))
            .arg(pid.to_string())
            .status()
            .unwrap_or_else(|e| panic!("kill -{signal} {pid}: {e}"));
        assert!(st.success(), "kill -{signal} {pid} ({}): {st}", self.name);
    }

    /// Panics (with the log tail) if the process has exited.
    pub fn assert_alive(&mut self) {
        if let Some(child) = self.child.as_mut() {
            if let Ok(Some(st)) = child.try_wait() {
                panic!(
                    "{} exited unexpectedly ({st}); last log lines of {}:\n{}",
                    self.name,
                    self.log.display(),
                    tail(&self.log, 60)
                );
            }
        }
    }

    /// Waits until `ready()` holds, failing early if the process dies.
    pub fn wait_ready(&mut self, timeout: Duration, mut ready: impl FnMut() -> bool) {
        let started = Instant::now();
        loop {
            self.assert_alive();
            if ready() {
                say(format!(
                    "{} ready after {:.1}s",
                    self.name,
                    started.elapsed().as_secs_f64()
                ));
                return;
            }
            if started.elapsed() > timeout {
                panic!(
                    "{} not ready after {timeout:?}; last log lines of {}:\n{}",
                    self.name,
                    self.log.display(),
                    tail(&self.log, 60)
                );
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Stops the process (idempotent).
    pub fn stop(&mut self) {
        let Some(mut child) = self.child.take() else {
            return;
        };
        if let Ok(Some(_)) = child.try_wait() {
            return;
        }
        let _ = Command::new("kill")
            .arg("-TERM")
            .arg(child.id().to_string())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
        let started = Instant::now();
        while started.elapsed() < self.grace {
            if let Ok(Some(_)) = child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        say(format!(
            "{} did not stop within {:?}; killing",
            self.name, self.grace
        ));
        let _ = child.kill();
        let _ = child.wait();
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Writes an HTTP/1.1 request head (`Connection: close`, the lab's User-Agent) to `s`.
pub fn write_request(
    s: &mut TcpStream,
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
) -> std::io::Result<()> {
    let mut req = format!(
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nUser-Agent: regcache-e2e-lab\r\nConnection: close\r\n"
    );
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    req.push_str("\r\n");
    s.write_all(req.as_bytes())
}

/// A minimal blocking HTTP/1.1 request over loopback: returns (status, head, body).
pub fn http_request(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
) -> std::io::Result<(u16, String, Vec<u8>)> {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(2))?;
    s.set_read_timeout(Some(Duration::from_secs(10)))?;
    write_request(&mut s, addr, method, path, headers)?;
    let mut buf = Vec::new();
    s.read_to_end(&mut buf)?;
    let (status, head, body) = split_response(&buf)?;
    Ok((status, head, buf[body..].to_vec()))
}

/// Splits a whole HTTP/1.1 answer: its status, its head (status line and headers) and where
/// the body starts.
///
/// Errors: no header terminator, or a status line without a status.
pub fn split_response(buf: &[u8]) -> std::io::Result<(u16, String, usize)> {
    let split = buf
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .ok_or_else(|| {
            std::io::Error::other(format!("no HTTP header terminator in {} bytes", buf.len()))
        })?;
    let head = String::from_utf8_lossy(&buf[..split]).into_owned();
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| std::io::Error::other(format!("bad status line: {head}")))?;
    Ok((status, head, split + 4))
}

/// Status of `GET path` on addr, or None if the connection failed.
pub fn http_status(addr: SocketAddr, path: &str) -> Option<u16> {
    http_request(addr, "GET", path, &[]).ok().map(|r| r.0)
}

/// Unmounts (lazily) everything mounted below `root`, deepest first.
pub fn unmount_below(root: &Path) {
    let Ok(mounts) = fs::read_to_string("/proc/self/mounts") else {
        return;
    };
    let root = root.to_string_lossy().into_owned();
    let mut points: Vec<String> = mounts
        .lines()
        .filter_map(|l| l.split_whitespace().nth(1))
        .map(|p| p.replace("\\040", " "))
        .filter(|p| p == &root || p.starts_with(&format!("{root}/")))
        .collect();
    points.sort_by_key(|p| std::cmp::Reverse(p.len()));
    points.dedup();
    for p in points {
        say(format!("unmounting leftover mount {p}"));
        let _ = Command::new("umount")
            .arg("-l")
            .arg(&p)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
    }
}
