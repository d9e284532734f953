//! Real processes on loopback: five `ringlb-agent`s on 127.0.0.1–5 form a
//! ring; kill -9 of one, its restart, and the loss of the dispatcher are
//! observed through `ringlb-agent status`, with measured times printed.
//! Also: the agent's connection list equals what `ss -tn` shows for real
//! connections to a local nginx.

use ringlb_ring::member::Timers;
use std::collections::BTreeSet;
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

const AGENT: &str = env!("CARGO_BIN_EXE_ringlb-agent");

struct Cluster {
    dir: PathBuf,
    port: u16,
    profile: &'static str,
    children: Vec<Option<Child>>,
}

impl Drop for Cluster {
    fn drop(&mut self) {
        for c in self.children.iter_mut().flatten() {
            let _ = c.kill();
            let _ = c.wait();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn epoch_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_millis() as u64
}

impl Cluster {
    fn addr(&self, i: usize) -> String {
        format!("127.0.0.{}:{}", i + 1, self.port)
    }
    fn cfg_path(&self, i: usize) -> PathBuf {
        self.dir.join(format!("agent{i}.yaml"))
    }
    fn new(profile: &'static str, port: u16, capable: &[usize]) -> Cluster {
        let dir = std::env::temp_dir().join(format!("ringlb-agents-{profile}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let mut c = Cluster { dir, port, profile, children: Vec::new() };
        let peers: Vec<String> = (0..5).map(|i| c.addr(i)).collect();
        {
            use std::os::unix::fs::PermissionsExt;
            let key = c.dir.join("cluster.key");
            std::fs::write(&key, "5e8b1f4a9c2d7e0b3f6a1c8d5e2b9f4a7c0d3e6b1f8a5c2d9e4b7f0a3c6d1e8b\n").unwrap();
            std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o600)).unwrap();
        }
        for i in 0..5 {
            let yaml = format!(
                "listen: {}\npeers: [{}]\ndispatch_capable: {}\nkey_file: cluster.key\nprofile: {profile}\nstatus_file: {}\nload_report_ms: 500\n",
                c.addr(i),
                peers.join(", "),
                capable.contains(&i),
                c.dir.join(format!("agent{i}.status")).display()
            );
            std::fs::write(c.cfg_path(i), yaml).unwrap();
        }
        for i in 0..5 {
            c.children.push(None);
            c.start(i);
        }
        c
    }
    fn start(&mut self, i: usize) {
        let child =
            Command::new(AGENT).args(["run", "-c", self.cfg_path(i).to_str().unwrap()]).spawn().expect("start agent");
        self.children[i] = Some(child);
    }
    fn kill9(&mut self, i: usize) {
        if let Some(mut c) = self.children[i].take() {
            let _ = Command::new("kill").args(["-9", &c.id().to_string()]).status();
            let _ = c.wait();
        }
    }
    /// `ringlb-agent status` of member i, as key → value lines.
    fn status(&self, i: usize) -> Option<String> {
        let out = Command::new(AGENT).args(["status", "-c", self.cfg_path(i).to_str().unwrap()]).output().ok()?;
        out.status.success().then(|| String::from_utf8_lossy(&out.stdout).into_owned())
    }
    fn field(status: &str, key: &str) -> Option<String> {
        status.lines().find_map(|l| l.strip_prefix(&format!("{key} ")).map(str::to_owned))
    }
    /// Waits until every member in `live` reports exactly `live` as the ring
    /// (and, if given, `dispatcher`). Returns the elapsed time.
    fn wait_for(&self, live: &[usize], dispatcher: Option<usize>, limit: Duration) -> Result<Duration, String> {
        let want: Vec<String> = live.iter().map(|&i| self.addr(i)).collect();
        let want = want.join(",");
        let start = Instant::now();
        loop {
            let mut last = String::new();
            let ok = live.iter().all(|&i| {
                let Some(s) = self.status(i) else {
                    last = format!("member {i}: no status");
                    return false;
                };
                let members = Self::field(&s, "members").unwrap_or_default();
                let state = Self::field(&s, "state").unwrap_or_default();
                let d = Self::field(&s, "dispatcher").unwrap_or_default();
                let d_ok = dispatcher.is_none_or(|k| d == self.addr(k));
                if members != want || state != "ring" || !d_ok {
                    last = format!("member {i}: state {state}, members {members}, dispatcher {d}");
                    return false;
                }
                true
            });
            if ok {
                return Ok(start.elapsed());
            }
            if start.elapsed() > limit {
                return Err(format!("{}: not converged to [{want}] within {limit:?}; {last}", self.profile));
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }
    /// Earliest purge any of `live` logged after `since_ms` (epoch ms).
    fn first_purge_after(&self, live: &[usize], since_ms: u64) -> Option<u64> {
        live.iter()
            .filter_map(|&i| self.status(i))
            .flat_map(|s| {
                s.lines()
                    .filter_map(|l| l.strip_prefix("event "))
                    .filter(|l| l.contains("purge:"))
                    .filter_map(|l| l.split_whitespace().next()?.parse::<u64>().ok())
                    .collect::<Vec<_>>()
            })
            .filter(|&t| t >= since_ms)
            .min()
    }
}

fn failover(profile: &'static str, timers: Timers, port: u16) {
    // Members 1 and 3 (127.0.0.2 and .4) can dispatch; the dispatcher is 127.0.0.2.
    let mut c = Cluster::new(profile, port, &[1, 3]);
    let bound = Duration::from_millis(timers.convergence_bound_ms(5, 5));
    let startup = c.wait_for(&[0, 1, 2, 3, 4], Some(1), bound * 3).unwrap();
    println!("{profile}: 5 agents formed one ring in {startup:?}, dispatcher 127.0.0.2");

    let t0 = epoch_ms();
    c.kill9(2);
    let reform = c.wait_for(&[0, 1, 3, 4], Some(1), bound).unwrap();
    let detect = c.first_purge_after(&[0, 1, 3, 4], t0).map(|t| t - t0);
    println!(
        "{profile}: kill -9 127.0.0.3 → detected (first purge) after {} ms, ring re-formed without it after {} ms (bound {} ms)",
        detect.map_or("?".into(), |d| d.to_string()),
        reform.as_millis(),
        bound.as_millis()
    );
    assert!(detect.is_some(), "no member logged a purge");

    c.start(2);
    let rejoin = c.wait_for(&[0, 1, 2, 3, 4], Some(1), bound).unwrap();
    println!("{profile}: 127.0.0.3 restarted → back in the ring after {} ms", rejoin.as_millis());

    c.kill9(1);
    let elect = c.wait_for(&[0, 2, 3, 4], Some(3), bound).unwrap();
    println!(
        "{profile}: kill -9 of the dispatcher 127.0.0.2 → new dispatcher 127.0.0.4 announced by all after {} ms",
        elect.as_millis()
    );
}

#[test]
fn five_agents_fast_profile() {
    failover("fast", Timers::FAST, 7610);
}

#[test]
fn five_agents_seed_profile() {
    failover("seed", Timers::SEED, 7710);
}

fn nginx_conf(dir: &Path, port: u16) -> PathBuf {
    let conf = dir.join("nginx.conf");
    std::fs::write(
        &conf,
        format!(
            "worker_processes 1;\ndaemon off;\npid {d}/nginx.pid;\nerror_log {d}/error.log;\nevents {{ worker_connections 64; }}\nhttp {{ access_log off; client_header_timeout 60s; server {{ listen 127.0.0.1:{port}; location / {{ return 200 \"ok\\n\"; }} }} }}\n",
            d = dir.display()
        ),
    )
    .unwrap();
    conf
}

/// Starts nginx on 127.0.0.1:`port` and waits until it accepts connections.
fn start_nginx(dir: &Path, port: u16) -> Child {
    let nginx =
        Command::new("nginx").args(["-c", nginx_conf(dir, port).to_str().unwrap()]).spawn().expect("nginx installed");
    let deadline = Instant::now() + Duration::from_secs(10);
    while TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(Instant::now() < deadline, "nginx did not start");
        std::thread::sleep(Duration::from_millis(50));
    }
    std::thread::sleep(Duration::from_millis(200)); // the readiness probe's connection closes
    nginx
}

/// SIGTERM, not SIGKILL: the master then stops its workers too.
fn stop_nginx(mut nginx: Child) {
    let _ = Command::new("kill").args(["-TERM", &nginx.id().to_string()]).status();
    let _ = nginx.wait();
}

/// "local peer" pairs of established connections to local `port`, as `ss -tn` shows them.
fn ss_established(port: u16) -> BTreeSet<String> {
    let ss =
        Command::new("ss").args(["-tnH", "state", "established", &format!("( sport = :{port} )")]).output().unwrap();
    String::from_utf8_lossy(&ss.stdout)
        .lines()
        .filter_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            (f.len() >= 4).then(|| format!("{} {}", f[2], f[3]))
        })
        .collect()
}

#[test]
fn connection_list_matches_ss_for_a_real_nginx() {
    let port = 18_089;
    let dir = std::env::temp_dir().join(format!("ringlb-conns-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let nginx = start_nginx(&dir, port);
    let clients: Vec<TcpStream> = (0..7).map(|_| TcpStream::connect(("127.0.0.1", port)).unwrap()).collect();
    std::thread::sleep(Duration::from_millis(200));

    let ours = Command::new(AGENT).args(["connections", "--port", &port.to_string()]).output().unwrap();
    let ours: BTreeSet<String> = String::from_utf8_lossy(&ours.stdout).lines().map(str::to_owned).collect();
    let ss = ss_established(port);
    stop_nginx(nginx);
    drop(clients);
    let _ = std::fs::remove_dir_all(&dir);
    println!("agent: {ours:?}\nss:    {ss:?}");
    assert_eq!(ours.len(), 7, "seven client connections to nginx");
    assert_eq!(ours, ss);
}

/// The example configuration shipped in deploy/ parses with a good key
/// beside it (status then fails only because no agent is running); without
/// the key, or with a weak or world-readable one, it is refused with the
/// reason; a bad config names the line.
#[test]
fn example_config_parses_and_bad_config_or_key_is_named() {
    use std::os::unix::fs::PermissionsExt;
    let dir = std::env::temp_dir().join(format!("ringlb-agent-bad-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let example = dir.join("agent.yaml");
    std::fs::copy(concat!(env!("CARGO_MANIFEST_DIR"), "/../deploy/agent.example.yaml"), &example).unwrap();
    let key = dir.join("cluster.key");
    let status = |want: &str| {
        let out = Command::new(AGENT)
            .args(["status", "-c", example.to_str().unwrap()])
            .env_remove("CREDENTIALS_DIRECTORY")
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr).into_owned();
        assert!(err.contains(want), "want {want:?}: {err}");
    };
    status("cluster.key: No such file");
    std::fs::write(&key, "change-me-shared-cluster-secret\n").unwrap();
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o600)).unwrap();
    status("not hex digits");
    std::fs::write(&key, "00112233445566778899aabbccddeeff").unwrap();
    status("at least 64");
    std::fs::write(&key, "6d2f9a4c1e8b7d3a5f0c2e9b4a7d1c8f3e6b0a5d2c9f4e7b1a8d3c6f0e5b2a9d").unwrap();
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o644)).unwrap();
    status("mode 0644");
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o600)).unwrap();
    status("is the agent running?");

    let bad = dir.join("bad.yaml");
    std::fs::write(
        &bad,
        "listen: 127.0.0.1:7400\npeers: [127.0.0.1:7400]\nkey_file: cluster.key\nprofle: fast\nstatus_file: /tmp/x\n",
    )
    .unwrap();
    let out = Command::new(AGENT).args(["run", "-c", bad.to_str().unwrap()]).output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(err.contains("bad.yaml:4:") && err.contains("profle"), "{err}");
    let _ = std::fs::remove_dir_all(&dir);
}

/// State reconstruction's query end to end: a member (this test, via the
/// library's UDP driver) joins a ring of two real agents, asks one of them
/// for its connections to a port, and receives over the reliable layer
/// exactly what `ss` shows.
#[test]
fn connection_query_over_the_ring() {
    use ringlb_ring::driver::Driver;
    use ringlb_ring::member::{Config, Event, Member};
    use ringlb_ring::{Dest, Key};
    use std::net::SocketAddrV4;

    let (port, ring_port) = (18_091, 7_810);
    let dir = std::env::temp_dir().join(format!("ringlb-query-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let nginx = start_nginx(&dir, port);
    let clients: Vec<TcpStream> = (0..4).map(|_| TcpStream::connect(("127.0.0.1", port)).unwrap()).collect();

    let addr = |i: u8| SocketAddrV4::new([127, 0, 0, 20 + i].into(), ring_port);
    // Member 4 is configured but never runs: the forged flood below is sent
    // from its address by a holder of the key.
    let peers: Vec<String> = (1..=4).map(|i| addr(i).to_string()).collect();
    let mut agents = Vec::new();
    const SECRET: &str = "0f1e2d3c4b5a69788796a5b4c3d2e1f00f1e2d3c4b5a69788796a5b4c3d2e1f0";
    {
        use std::os::unix::fs::PermissionsExt;
        let key = dir.join("cluster.key");
        std::fs::write(&key, SECRET).unwrap();
        std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o600)).unwrap();
    }
    for i in 1..=2u8 {
        let cfg = dir.join(format!("a{i}.yaml"));
        std::fs::write(
            &cfg,
            format!(
                "listen: {}\npeers: [{}]\nkey_file: cluster.key\nprofile: fast\nconnection_ports: [{port}]\nstatus_file: {}\n",
                addr(i),
                peers.join(", "),
                dir.join(format!("a{i}.status")).display()
            ),
        )
        .unwrap();
        agents.push(Command::new(AGENT).args(["run", "-c", cfg.to_str().unwrap()]).spawn().unwrap());
    }
    let driver = Driver::bind(addr(3)).unwrap();
    let mut me = Member::new(
        Config {
            me: addr(3),
            peers: (1..=3).map(addr).collect(),
            dispatch_capable: true,
            // Agents answer only an appliance of their view.
            appliance: true,
            timers: ringlb_ring::member::Timers::FAST,
            key: Key::from_secret(SECRET),
            incarnation: 1,
        },
        driver.now(),
    );
    let mut answer = None;
    let mut asked = false;
    let start = Instant::now();
    while answer.is_none() && start.elapsed() < Duration::from_secs(15) {
        driver.run_for(&mut me, Duration::from_millis(50), |_, e| {
            if let Event::Reliable { from, payload } = e {
                if from == addr(1) {
                    answer = Some(String::from_utf8_lossy(&payload).into_owned());
                }
            }
            true
        });
        if !asked && me.members().len() == 3 && !me.is_forming() {
            me.send_app(driver.now(), Dest::To(addr(1)), format!("conns? {port}").into_bytes()).unwrap();
            asked = true;
        }
    }
    let ss = ss_established(port);
    // A flood of questions (1,000/s for 2 s): the agent answers at its rate
    // limit, from one reader thread, with bounded memory.
    let flood_start = Instant::now();
    let mut sent = 0;
    while flood_start.elapsed() < Duration::from_secs(2) {
        for _ in 0..10 {
            let _ = me.send_app(driver.now(), Dest::To(addr(1)), format!("conns? {port}").into_bytes());
            sent += 1;
        }
        driver.run_for(&mut me, Duration::from_millis(10), |_, _| true);
    }
    driver.run_for(&mut me, Duration::from_millis(500), |_, _| true);
    let before_forged = std::fs::read_to_string(dir.join("a1.status")).unwrap_or_default();
    // Then 1,000/s for 2 s with a forged origin (outside the view), each
    // packet valid (the key, a configured sender, a fresh sequence number).
    let forger = std::net::UdpSocket::bind(addr(4)).unwrap();
    let forged_origin = SocketAddrV4::new([127, 0, 0, 99].into(), ring_port);
    let key = Key::from_secret(SECRET);
    let mut forged = 0u64;
    let forged_start = Instant::now();
    while forged_start.elapsed() < Duration::from_secs(2) {
        for _ in 0..10 {
            forged += 1;
            let msg = ringlb_ring::wire::Msg::App {
                origin: forged_origin,
                incarnation: 1,
                seq: forged,
                dest: Dest::To(addr(1)),
                hops_left: 2,
                payload: format!("conns? {port}").into_bytes(),
            };
            let p = ringlb_ring::wire::Packet { sender: addr(4), incarnation: 7, seq: forged, msgs: vec![msg] };
            let _ = forger.send_to(&ringlb_ring::wire::encode(&p, &addr(1), &key), addr(1));
        }
        driver.run_for(&mut me, Duration::from_millis(10), |_, _| true);
    }
    driver.run_for(&mut me, Duration::from_millis(500), |_, _| true);
    let proc_status = std::fs::read_to_string(format!("/proc/{}/status", agents[0].id())).unwrap_or_default();
    let field = |k: &str| -> u64 {
        proc_status
            .lines()
            .find_map(|l| l.strip_prefix(k))
            .and_then(|v| v.split_whitespace().next()?.parse().ok())
            .unwrap_or(0)
    };
    let (threads, rss_kb) = (field("Threads:"), field("VmRSS:"));
    // The bucket: 20 at once, then 20 per second.
    let allowed = 20 + 20 * (flood_start.elapsed().as_secs() + 1);
    let agent_status = std::fs::read_to_string(dir.join("a1.status")).unwrap_or_default();
    let questions = agent_status.lines().find(|l| l.starts_with("conns_questions")).unwrap_or("").to_owned();
    let questions_before_forged =
        before_forged.lines().find(|l| l.starts_with("conns_questions")).unwrap_or("").to_owned();
    println!("flood of {sent} questions: {questions_before_forged}");
    println!("then {forged} with a forged origin: agent threads={threads} rss={rss_kb} kB; {questions}");
    for mut a in agents {
        let _ = a.kill();
        let _ = a.wait();
    }
    stop_nginx(nginx);
    drop(clients);
    let _ = std::fs::remove_dir_all(&dir);
    assert!(asked, "the test member never joined the agents' ring");
    let answer = answer.expect("no reliable answer to the connection query");
    let got: BTreeSet<String> = answer.lines().map(str::to_owned).collect();
    println!("query answer from {}: {got:?}", addr(1));
    assert_eq!(got.len(), 4);
    assert_eq!(got, ss);
    let count_in = |line: &str, k: &str| -> u64 {
        line.split_whitespace().find_map(|f| f.strip_prefix(k)).and_then(|v| v.parse().ok()).unwrap_or(u64::MAX)
    };
    let count = |k: &str| count_in(&questions, k);
    // Nobody outside the view is answered: every forged question refused,
    // and not one answer more than before the forged flood.
    assert!(count("refused_outside_view=") >= forged * 9 / 10, "forged questions not refused: {questions}");
    assert_eq!(count("answered="), count_in(&questions_before_forged, "answered="), "a forged origin was answered");
    assert!(sent >= 1000, "the flood sent {sent}");
    assert!(count("asked=") >= 1000, "questions not delivered: {questions}");
    assert!(count("answered=") <= allowed, "answers beyond the rate limit ({allowed}): {questions}");
    assert!(count("rate_limited=") + count("busy=") >= 900, "{questions}");
    assert!((1..=8).contains(&threads), "agent threads: {threads}");
    assert!(rss_kb < 64 * 1024, "agent memory: {rss_kb} kB");
}
