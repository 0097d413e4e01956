//! `tpr-agent init` for real: two network namespaces joined by a veth pair
//! (10.231.x.0/24, created and removed by the test), label servers on the
//! app port and the agent port inside the "pod" namespace, and clients from
//! the other namespace, from the pod itself, and from the pod as GID 7777.
//! Needs root (`ip netns`, iptables).

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

const APP_PORT: u16 = 8080;
const AGENT_PORT: u16 = 9901;

fn run(cmd: &mut Command) -> Output {
    let out = cmd.output().unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// Two namespaces and a veth pair; removed on drop.
struct Net {
    client: String,
    pod: String,
    pod_ip: String,
}

impl Net {
    fn create() -> Net {
        let id = std::process::id();
        let net = Net {
            client: format!("tpr-c-{id}"),
            pod: format!("tpr-p-{id}"),
            pod_ip: format!("10.231.{}.2", id % 250),
        };
        let client_ip = format!("10.231.{}.1/24", id % 250);
        let (vc, vp) = (
            format!("tpc{}", id % 100_000),
            format!("tpp{}", id % 100_000),
        );
        run(Command::new("ip").args(["netns", "add", &net.client]));
        run(Command::new("ip").args(["netns", "add", &net.pod]));
        run(Command::new("ip").args([
            "link",
            "add",
            &vc,
            "netns",
            &net.client,
            "type",
            "veth",
            "peer",
            "name",
            &vp,
            "netns",
            &net.pod,
        ]));
        for (ns, dev, addr) in [
            (&net.client, &vc, client_ip),
            (&net.pod, &vp, format!("{}/24", net.pod_ip)),
        ] {
            run(Command::new("ip").args(["-n", ns, "addr", "add", &addr, "dev", dev]));
            run(Command::new("ip").args(["-n", ns, "link", "set", dev, "up"]));
            run(Command::new("ip").args(["-n", ns, "link", "set", "lo", "up"]));
        }
        net
    }

    fn exec(&self, ns: &str) -> Command {
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", ns]);
        cmd
    }
}

impl Drop for Net {
    fn drop(&mut self) {
        // Deleting a namespace removes its end of the veth pair, and so both.
        for ns in [&self.client, &self.pod] {
            let _ = Command::new("ip").args(["netns", "del", ns]).status();
        }
    }
}

/// A process of this test binary, killed on drop.
struct Helper(Child);

impl Drop for Helper {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Runs one of the `helper_*` functions below in a namespace.
fn helper(net: &Net, ns: &str, name: &str, env: (&str, &str), gid: Option<u32>) -> Command {
    let mut cmd = net.exec(ns);
    if let Some(gid) = gid {
        cmd.args(["setpriv", "--regid", &gid.to_string(), "--clear-groups"]);
    }
    cmd.arg(std::env::current_exe().unwrap())
        .args([
            "--ignored",
            "--exact",
            name,
            "--nocapture",
            "--test-threads=1",
        ])
        .env(env.0, env.1);
    cmd
}

/// Which label answers a connection to `addr`, from `ns`, optionally as `gid`.
fn who_answers(net: &Net, ns: &str, addr: &str, gid: Option<u32>) -> String {
    let out = run(&mut helper(
        net,
        ns,
        "helper_connect",
        ("TPR_TEST_CONNECT", addr),
        gid,
    ));
    let stdout = String::from_utf8_lossy(&out.stdout);
    stdout
        .lines()
        .find_map(|l| l.split_once("ANSWER:").map(|(_, a)| a))
        .unwrap_or_else(|| panic!("no answer in {stdout}"))
        .to_owned()
}

fn rules(net: &Net) -> String {
    let out = run(net.exec(&net.pod).args(["iptables-save", "-t", "nat"]));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn init_redirects_the_app_port_to_the_agent_except_for_the_agents_gid() {
    assert!(
        Command::new("id")
            .arg("-u")
            .output()
            .is_ok_and(|o| o.stdout.starts_with(b"0\n")),
        "this test needs root (network namespaces and iptables)"
    );
    let net = Net::create();
    let labels = format!("{APP_PORT}=app,{AGENT_PORT}=agent");
    let mut servers = helper(
        &net,
        &net.pod,
        "helper_serve",
        ("TPR_TEST_SERVE", &labels),
        None,
    );
    let mut servers = Helper(servers.stdout(Stdio::piped()).spawn().unwrap());
    // Wait for the helper to listen.
    let mut line = String::new();
    let mut out = BufReader::new(servers.0.stdout.take().unwrap());
    let deadline = Instant::now() + Duration::from_secs(10);
    while !line.contains("LISTENING") {
        line.clear();
        assert!(
            out.read_line(&mut line).unwrap() > 0 && Instant::now() < deadline,
            "helper did not start"
        );
    }

    let pod_app = format!("{}:{APP_PORT}", net.pod_ip);
    assert_eq!(
        who_answers(&net, &net.client, &pod_app, None),
        "app",
        "before init"
    );

    for _ in 0..2 {
        let init = net
            .exec(&net.pod)
            .arg(env!("CARGO_BIN_EXE_tpr-agent"))
            .arg("init")
            .env("TPR_AGENT_REDIRECTS", format!("{APP_PORT}={AGENT_PORT}"))
            .output()
            .unwrap();
        assert!(
            init.status.success(),
            "init: {}",
            String::from_utf8_lossy(&init.stderr)
        );
    }
    let rules = rules(&net);
    assert_eq!(
        rules.matches("-j REDIRECT").count(),
        1,
        "idempotent: {rules}"
    );
    assert_eq!(
        rules.matches("-j TPR_AGENT").count(),
        2,
        "idempotent: {rules}"
    );

    assert_eq!(
        who_answers(&net, &net.client, &pod_app, None),
        "agent",
        "from outside the pod"
    );
    let local_app = format!("127.0.0.1:{APP_PORT}");
    assert_eq!(
        who_answers(&net, &net.pod, &local_app, None),
        "agent",
        "from inside the pod"
    );
    assert_eq!(
        who_answers(&net, &net.pod, &local_app, Some(7777)),
        "app",
        "the agent's GID is exempt"
    );
    assert_eq!(
        who_answers(&net, &net.pod, &pod_app, Some(7777)),
        "app",
        "the agent's GID is exempt"
    );
    drop(servers);
}

#[test]
#[ignore = "helper: run inside a namespace by the test above"]
fn helper_serve() {
    let Ok(spec) = std::env::var("TPR_TEST_SERVE") else {
        return;
    };
    for entry in spec.split(',') {
        let (port, label) = entry.split_once('=').unwrap();
        let listener =
            std::net::TcpListener::bind(("0.0.0.0", port.parse::<u16>().unwrap())).unwrap();
        let label = label.to_owned();
        std::thread::spawn(move || {
            for mut conn in listener.incoming().flatten() {
                let _ = conn.write_all(format!("{label}\n").as_bytes());
            }
        });
    }
    println!("LISTENING");
    std::thread::sleep(Duration::from_secs(120));
}

#[test]
#[ignore = "helper: run inside a namespace by the test above"]
fn helper_connect() {
    let Ok(addr) = std::env::var("TPR_TEST_CONNECT") else {
        return;
    };
    let mut tcp =
        TcpStream::connect_timeout(&addr.parse().unwrap(), Duration::from_secs(5)).unwrap();
    tcp.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let mut answer = String::new();
    let mut byte = [0u8; 1];
    while tcp.read(&mut byte).unwrap_or(0) == 1 && byte[0] != b'\n' {
        answer.push(byte[0] as char);
    }
    println!("ANSWER:{answer}");
}
