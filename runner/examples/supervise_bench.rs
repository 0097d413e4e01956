//! Benchmark of the local process loop: for each of N saves, the time from
//! the file write to the stop signal reaching the process, and from the old
//! process's exit to the new one's start; tpr's RSS while watching a tree
//! of 50,000 files. Prints `name value unit` lines.
//!
//! cargo run --release -p tpr --example supervise_bench [-- SAVES FILES]
//!
//! The binary is its own shim (like tpr) and its own child: in child mode
//! it logs `start`, waits for SIGTERM, logs `signal` and `exit`, each with
//! a wall-clock timestamp, so that both sides of each interval are taken
//! where they happen.

use std::io::Write;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use nix::sys::signal::{SigSet, Signal};
use tpr::session_loop::{SessionEvent, SessionOptions, control_channel, run_session};
use tpr::supervise::{ProcessSpec, shim_main_if_requested};

const CHILD: &str = "__bench-child";

fn now_ns() -> u128 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock")
        .as_nanos()
}

fn log(path: &Path, what: &str) {
    let mut file = std::fs::OpenOptions::new()
        .append(true)
        .create(true)
        .open(path)
        .expect("log");
    writeln!(file, "{what} {}", now_ns()).expect("log write");
}

fn child(log_path: &Path) -> ! {
    let mut set = SigSet::empty();
    set.add(Signal::SIGTERM);
    set.thread_block().expect("block SIGTERM");
    log(log_path, "start");
    set.wait().expect("sigwait");
    log(log_path, "signal");
    log(log_path, "exit");
    std::process::exit(0);
}

fn entries(log_path: &Path, kind: &str) -> Vec<u128> {
    std::fs::read_to_string(log_path)
        .unwrap_or_default()
        .lines()
        .filter_map(|line| {
            let (k, v) = line.split_once(' ')?;
            (k == kind).then(|| v.parse().ok()).flatten()
        })
        .collect()
}

fn wait_for(what: &str, mut check: impl FnMut() -> bool) {
    let start = std::time::Instant::now();
    while !check() {
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "timed out waiting for {what}"
        );
        std::thread::sleep(Duration::from_millis(2));
    }
}

fn percentile(values: &mut [f64], p: f64) -> f64 {
    values.sort_by(|a, b| a.total_cmp(b));
    let rank = ((p / 100.0) * values.len() as f64).ceil() as usize;
    values[rank.clamp(1, values.len()) - 1]
}

fn rss_mib(pid: &str) -> f64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
        .map(|kb| kb / 1024.0)
        .unwrap_or(f64::NAN)
}

/// A tree of `files` files, 100 per directory, 10 directories per level.
fn make_tree(root: &Path, files: usize) -> usize {
    let dirs = files.div_ceil(100);
    for d in 0..dirs {
        let dir = root.join(format!("d{}", d / 10)).join(format!("e{d}"));
        std::fs::create_dir_all(&dir).expect("mkdir");
        for f in 0..100.min(files - d * 100) {
            std::fs::write(dir.join(format!("f{f}.txt")), "x").expect("write");
        }
    }
    dirs + dirs.div_ceil(10) + 1
}

fn main() {
    shim_main_if_requested();
    let args: Vec<String> = std::env::args().collect();
    if args.get(1).map(String::as_str) == Some(CHILD) {
        child(Path::new(&args[2]));
    }
    let saves: usize = args.get(1).and_then(|s| s.parse().ok()).unwrap_or(60);
    let files: usize = args.get(2).and_then(|s| s.parse().ok()).unwrap_or(50_000);

    let work = tempfile::tempdir().expect("tempdir");
    let root = work.path().join("project");
    let log_path = work.path().join("child.log");
    let dirs = make_tree(&root, files);
    let target = root.join("d0/e0/f0.txt");

    let exe = std::env::current_exe().expect("own path");
    let mut spec = ProcessSpec::new(
        "bench",
        vec![
            exe.display().to_string(),
            CHILD.into(),
            log_path.display().to_string(),
        ],
        &root,
    );
    spec.env = tpr::supervise::own_env();
    spec.watch = vec![root.clone()];

    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let (handle, control) = control_channel();
    let mut options = SessionOptions::new().expect("options");
    options.handle_signals = false;
    options.control = Some(control);
    let shims: Arc<Mutex<Vec<u32>>> = Arc::default();
    let sink = shims.clone();
    let setup = std::time::Instant::now();
    let session = runtime.spawn(run_session(
        vec![spec],
        || Err("no project file".to_string()),
        options,
        move |event| {
            if let SessionEvent::Started { pid, .. } = event {
                sink.lock().unwrap().push(*pid);
            }
        },
    ));
    wait_for("first start", || entries(&log_path, "start").len() == 1);
    let setup_ms = setup.elapsed().as_secs_f64() * 1000.0;

    let mut writes = Vec::with_capacity(saves);
    for i in 0..saves {
        // Settle so that each save is its own burst.
        std::thread::sleep(Duration::from_millis(120));
        writes.push(now_ns());
        std::fs::write(&target, format!("save {i}\n")).expect("save");
        wait_for("restart", || entries(&log_path, "start").len() == i + 2);
    }
    let rss_tpr = rss_mib("self");
    let rss_shim = shims
        .lock()
        .unwrap()
        .last()
        .map(|pid| rss_mib(&pid.to_string()))
        .unwrap_or(f64::NAN);
    handle.shutdown(true);
    runtime.block_on(session).expect("join").expect("session");

    let (starts, signals, exits) = (
        entries(&log_path, "start"),
        entries(&log_path, "signal"),
        entries(&log_path, "exit"),
    );
    let ms = |ns: u128, from: u128| ns.saturating_sub(from) as f64 / 1e6;
    let mut to_signal: Vec<f64> = (0..saves).map(|i| ms(signals[i], writes[i])).collect();
    let mut to_start: Vec<f64> = (0..saves).map(|i| ms(starts[i + 1], exits[i])).collect();

    println!("saves {saves} count");
    println!("watched_files {files} files");
    println!("watched_dirs {dirs} dirs");
    println!("debounce 50 ms");
    println!("watch_setup_to_first_start {setup_ms:.1} ms");
    println!(
        "write_to_signal_p50 {:.2} ms",
        percentile(&mut to_signal, 50.0)
    );
    println!(
        "write_to_signal_p99 {:.2} ms",
        percentile(&mut to_signal, 99.0)
    );
    println!(
        "exit_to_start_p50 {:.2} ms",
        percentile(&mut to_start, 50.0)
    );
    println!(
        "exit_to_start_p99 {:.2} ms",
        percentile(&mut to_start, 99.0)
    );
    println!("rss_tpr_watching {rss_tpr:.1} MiB");
    println!("rss_shim {rss_shim:.1} MiB");
}
