//! Configuration: a good file parses with defaults filled in; bad files are
//! rejected with file:line:column (or the key) and the reason.

use ringlb::config::{self, Mode, SchedulerKind};

const GOOD: &str = r#"
eal:
  control_core: 0
  worker_cores: [1]
ports:
  - device: "net_af_packet0,iface=p0"
    ip: 198.18.0.1/24
services:
  - name: web
    vip: 198.18.100.1
    port: 80
    mode: dsr
    group: web
  - name: api
    vip: 198.18.100.1
    port: 8443
    mode: nat
    scheduler: maglev
    group: api
server_groups:
  web:
    - { ip: 198.18.0.11, port: 80 }
    - { ip: 198.18.0.12, port: 80, weight: 3 }
  api:
    - { ip: 198.18.0.21, port: 443 }
"#;

#[test]
fn good_config_resolves_with_defaults() {
    let c = config::parse(GOOD, "good.yaml").unwrap();
    assert!(c.eal.hugepages);
    assert_eq!(c.services[0].mode, Mode::Dsr);
    assert_eq!(c.services[0].scheduler, SchedulerKind::Wrr);
    assert_eq!(c.services[1].maglev_table_size, 65_537);
    assert_eq!(c.servers.len(), 3);
    assert_eq!(c.servers[1].weight, 3);
    assert_eq!(c.session_capacity, 1 << 20);
    assert_eq!(c.timeouts.established_ms, 300_000);
    assert_eq!(c.ports[0].dpdk_name(), "net_af_packet0");
    let text = c.render();
    assert!(text.contains("maglev_table_size: 65537"), "{text}");
}

#[test]
fn the_version_follows_the_effective_configuration_not_its_spelling() {
    let v = config::parse(GOOD, "good.yaml").unwrap().version();
    assert_eq!(v.len(), 12);
    // Comments, a default spelled out, another key order: the same configuration.
    let respelled = GOOD
        .replace("    mode: dsr\n", "    mode: dsr   # direct server return\n    scheduler: wrr\n")
        .replace("{ ip: 198.18.0.11, port: 80 }", "{ port: 80, ip: 198.18.0.11, weight: 1 }");
    assert_eq!(config::parse(&respelled, "b.yaml").unwrap().version(), v);
    // Another weight: another version.
    let reweighted = GOOD.replace("weight: 3", "weight: 4");
    assert_ne!(config::parse(&reweighted, "c.yaml").unwrap().version(), v);
}

/// Replaces `from` (which must occur) by `to` in the good config, and returns
/// the error text.
fn reject(from: &str, to: &str) -> String {
    assert!(GOOD.contains(from), "test bug: {from:?} not in GOOD");
    let bad = GOOD.replacen(from, to, 1);
    match config::parse(&bad, "bad.yaml") {
        Ok(_) => panic!("accepted a bad config ({from:?} → {to:?})"),
        Err(e) => e.to_string(),
    }
}

fn assert_has(msg: &str, parts: &[&str]) {
    for p in parts {
        assert!(msg.contains(p), "message {msg:?} lacks {p:?}");
    }
}

#[test]
fn yaml_syntax_error_names_line_and_column() {
    let m = reject("    port: 80\n    mode: dsr", "    port: [80\n    mode: dsr");
    assert!(m.starts_with("bad.yaml:"), "{m}");
    let parts: Vec<&str> = m.splitn(4, ':').collect();
    assert!(parts[1].parse::<u32>().is_ok() && parts[2].parse::<u32>().is_ok(), "no line:column in {m}");
}

#[test]
fn unknown_key_is_rejected_with_location() {
    let m = reject("    mode: dsr", "    mode: dsr\n    shceduler: wrr");
    assert_has(&m, &["bad.yaml:", "shceduler"]);
}

#[test]
fn wrong_type_and_unknown_enum_value() {
    assert_has(&reject("    port: 80", "    port: eighty"), &["bad.yaml:"]);
    assert_has(&reject("    mode: dsr", "    mode: tunnel"), &["bad.yaml:", "tunnel"]);
    assert_has(&reject("port: 80 }", "port: 70000 }"), &["bad.yaml:"]);
}

#[test]
fn unknown_server_group() {
    assert_has(
        &reject("    group: web", "    group: wbe"),
        &["bad.yaml:13:12:", "unknown server group 'wbe'", "known: api, web"],
    );
}

#[test]
fn bad_addresses() {
    assert_has(&reject("ip: 198.18.0.1/24", "ip: 198.18.0.1"), &["bad.yaml:7:", "ports[0].ip", "prefix"]);
    assert_has(&reject("vip: 198.18.100.1\n", "vip: 198.18.100.300\n"), &["bad.yaml:"]);
    assert_has(
        &reject("ip: 198.18.0.21, port: 443", "ip: 10.9.9.9, port: 443"),
        &["bad.yaml:", "10.9.9.9 is on none of the ports' subnets"],
    );
    assert_has(
        &reject("ip: 198.18.0.1/24\n", "ip: 198.18.0.1/24\n    mac: \"02:00:zz:00:00:01\"\n"),
        &["ports[0].mac", "not a MAC"],
    );
}

#[test]
fn dsr_cannot_map_ports() {
    assert_has(
        &reject("ip: 198.18.0.11, port: 80", "ip: 198.18.0.11, port: 8080"),
        &["dsr", "cannot change ports", "8080"],
    );
}

#[test]
fn duplicate_service_address_and_name() {
    assert_has(&reject("port: 8443", "port: 80"), &["already another service's address"]);
    assert_has(&reject("name: api", "name: web"), &["'web' is empty or used twice"]);
}

#[test]
fn weights_sizes_and_timeouts() {
    assert_has(
        &reject("{ ip: 198.18.0.21, port: 443 }", "{ ip: 198.18.0.21, port: 443, weight: 0 }"),
        &["every weight is 0"],
    );
    assert_has(
        &reject("    scheduler: maglev", "    scheduler: maglev\n    maglev_table_size: 65536"),
        &["must be a prime"],
    );
    assert_has(&reject("worker_cores: [1]", "worker_cores: []"), &["at least one worker"]);
    assert_has(&reject("server_groups:", "timeouts: { syn: 5 }\nserver_groups:"), &["timeouts.syn", "not a duration"]);
    assert_has(&reject("server_groups:", "sessions: { capacity: 0 }\nserver_groups:"), &["sessions.capacity"]);
    assert_has(&reject("  worker_cores: [1]", "  worker_cores: [1]\n  hugepages: false"), &["eal.memory_mb"]);
    assert_has(
        &reject("  worker_cores: [1]", "  worker_cores: [1]\n  mbufs: 100"),
        &["bad.yaml:", "eal.mbufs: 100 is outside"],
    );
    let ok = GOOD.replacen("  worker_cores: [1]", "  worker_cores: [1]\n  mbufs: 300000", 1);
    assert_eq!(config::parse(&ok, "ok.yaml").expect("mbufs accepted").eal.mbufs, Some(300_000));
}

#[test]
fn durations_parse() {
    assert_eq!(config::parse_duration_ms("250ms"), Some(250));
    assert_eq!(config::parse_duration_ms("5s"), Some(5000));
    assert_eq!(config::parse_duration_ms("2m"), Some(120_000));
    assert_eq!(config::parse_duration_ms("0s"), None);
    assert_eq!(config::parse_duration_ms("5"), None);
    assert_eq!(config::parse_duration_ms("30d"), None);
    assert_eq!(config::parse_duration_ms("99999999h"), None);
}

/// The binary itself: `ringlb check` on bad files exits non-zero and prints
/// the location and reason on stderr; on a good file it exits 0.
#[test]
fn ringlb_check_exit_codes_and_messages() {
    let dir = std::env::temp_dir().join(format!("ringlb-cfg-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let cases: &[(&str, &str, &str, &str)] = &[
        ("syntax", "    port: 80\n    mode: dsr", "    port: [80\n    mode: dsr", ".yaml:"),
        ("unknown-key", "    mode: dsr", "    mode: dsr\n    shceduler: wrr", "shceduler"),
        ("bad-enum", "    mode: dsr", "    mode: tunnel", "tunnel"),
        ("unknown-group", "    group: web", "    group: wbe", "unknown server group 'wbe'"),
        ("no-prefix", "ip: 198.18.0.1/24", "ip: 198.18.0.1", "ports[0].ip"),
        ("off-subnet", "ip: 198.18.0.21, port: 443", "ip: 10.9.9.9, port: 443", "none of the ports' subnets"),
        ("dsr-port-map", "ip: 198.18.0.11, port: 80", "ip: 198.18.0.11, port: 8080", "cannot change ports"),
        (
            "zero-weights",
            "{ ip: 198.18.0.21, port: 443 }",
            "{ ip: 198.18.0.21, port: 443, weight: 0 }",
            "every weight is 0",
        ),
    ];
    for (name, from, to, want) in cases {
        let path = dir.join(format!("{name}.yaml"));
        std::fs::write(&path, GOOD.replacen(from, to, 1)).unwrap();
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_ringlb"))
            .args(["check", "-c", path.to_str().unwrap()])
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{name}: exit 0 on a bad config");
        assert!(
            err.contains(path.to_str().unwrap()) && err.contains(want),
            "{name}: stderr {err:?} lacks the file or {want:?}"
        );
        println!("{name}: exit {:?}: {}", out.status.code(), err.trim());
    }
    let good = dir.join("good.yaml");
    std::fs::write(&good, GOOD).unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_ringlb"))
        .args(["check", "-c", good.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(out.status.success());
    assert!(String::from_utf8_lossy(&out.stdout).contains("scheduler: maglev"));
    let missing = std::process::Command::new(env!("CARGO_BIN_EXE_ringlb"))
        .args(["check", "-c", "/nonexistent.yaml"])
        .output()
        .unwrap();
    assert!(!missing.status.success());
    assert!(String::from_utf8_lossy(&missing.stderr).contains("/nonexistent.yaml: cannot read"));
    let _ = std::fs::remove_dir_all(&dir);
}

/// GOOD with a `cluster:` section ending in `extra`; the key file is made once.
fn with_cluster(extra: &str) -> String {
    use std::os::unix::fs::PermissionsExt;
    let key = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join("config-test.key");
    std::fs::write(&key, "9f2c4b7e1a0d3c6f8e5b2a9d4c7f0e3b6a1d8c5f2e9b4a7d0c3f6e1b8a5d2c9f\n").unwrap();
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o600)).unwrap();
    format!(
        "{GOOD}cluster:\n  address: 10.255.0.1:7400\n  members: [10.255.0.1:7400, 10.255.0.2:7400]\n  key_file: {}\n{extra}",
        key.display()
    )
}

#[test]
fn vip_ownership_and_gratuitous_arp_default_and_are_checked() {
    let c = config::parse(&with_cluster(""), "c.yaml").unwrap();
    let cl = c.cluster.as_ref().unwrap();
    assert_eq!(cl.vips, config::VipMode::Shared, "siblings behind a trunk all answer, as before");
    assert_eq!(cl.garp, config::DEFAULT_GARP);
    let c = config::parse(&with_cluster("  vips: owned\n  garp: { count: 3, interval: 250ms }\n"), "c.yaml").unwrap();
    let cl = c.cluster.as_ref().unwrap();
    assert_eq!(cl.vips, config::VipMode::Owned);
    assert_eq!(cl.garp, config::Garp { count: 3, interval_ms: 250 });
    assert!(c.render().contains("vips: owned"), "{}", c.render());

    let err = |extra: &str| config::parse(&with_cluster(extra), "c.yaml").unwrap_err().to_string();
    let lines = GOOD.lines().count() + 4;
    assert_has(&err("  vips: mine\n"), &["c.yaml:", "cluster.vips: 'mine' is not shared or owned"]);
    assert_has(&err("  vips: owned\n  garp: { count: 0 }\n"), &["cluster.garp.count: 0 is not between 1 and 100"]);
    assert_has(
        &err("  garp: { interval: 20s }\n"),
        &[&format!("c.yaml:{}:", lines + 1), "cluster.garp.interval: 20s is not between 1ms and 10s"],
    );
    assert_has(&err("  garp: { every: 1s }\n"), &["every"]);
    assert_has(&err("  preempt: false\n"), &["cluster.preempt: only with vips: owned"]);
    let c = config::parse(&with_cluster("  vips: owned\n  preempt: false\n"), "c.yaml").unwrap();
    assert!(!c.cluster.as_ref().unwrap().preempt);
    assert!(config::parse(&with_cluster("  vips: owned\n"), "c.yaml").unwrap().cluster.unwrap().preempt, "default");
}

#[test]
fn a_servers_agent_must_be_a_ring_member_and_one_per_machine() {
    let with_agent = |agent: &str| {
        with_cluster("").replace(
            "- { ip: 198.18.0.11, port: 80 }",
            &format!("- {{ ip: 198.18.0.11, port: 80, agent: \"{agent}\" }}"),
        )
    };
    let c = config::parse(&with_agent("10.255.0.2:7400"), "c.yaml").unwrap();
    assert_eq!(c.servers[0].agent, Some("10.255.0.2:7400".parse().unwrap()));
    assert!(c.render().contains("agent: \"10.255.0.2:7400\""), "{}", c.render());
    let err = |y: &str| config::parse(y, "c.yaml").unwrap_err().to_string();
    // Line 22 of GOOD holds the server.
    assert_has(
        &err(&with_agent("10.255.0.9:7400")),
        &["c.yaml:22:", "agent: 10.255.0.9:7400 is not one of cluster.members"],
    );
    assert_has(&err(&with_agent("10.255.0.1:7400")), &["c.yaml:22:", "this appliance's own ring address"]);
    assert_has(&err(&with_agent("agent-one")), &["c.yaml:22:", "is not an IPv4 address with a port"]);
    let no_cluster =
        GOOD.replace("- { ip: 198.18.0.11, port: 80 }", "- { ip: 198.18.0.11, port: 80, agent: \"10.255.0.2:7400\" }");
    assert_has(&err(&no_cluster), &["c.yaml:22:", "configure cluster"]);
    let two = with_agent("10.255.0.2:7400")
        .replace("- { ip: 198.18.0.21, port: 443 }", "- { ip: 198.18.0.11, port: 443, agent: \"10.255.0.1:7401\" }");
    assert_has(&err(&two), &["already has agent 10.255.0.2:7400"]);
}

#[test]
fn probes_default_like_haproxy_and_are_checked() {
    let with = |p: &str| {
        GOOD.replace("    mode: dsr\n    group: web", &format!("    mode: dsr\n    group: web\n    probe: {p}"))
    };
    let c = config::parse(&with("{}"), "p.yaml").unwrap();
    assert_eq!(c.services[0].probe, Some(config::DEFAULT_PROBE));
    let c = config::parse(&with("{ interval: 300ms, timeout: 250ms, rise: 1, fall: 5 }"), "p.yaml").unwrap();
    assert_eq!(c.services[0].probe, Some(config::Probe { interval_ms: 300, timeout_ms: 250, rise: 1, fall: 5 }));
    assert!(c.render().contains("probe: { interval: 300ms, timeout: 250ms, rise: 1, fall: 5 }"), "{}", c.render());
    let err = |p: &str| config::parse(&with(p), "p.yaml").unwrap_err().to_string();
    assert_has(
        &err("{ interval: 1s, timeout: 2s }"),
        &["p.yaml:", "services[0].probe.timeout: longer than the interval"],
    );
    assert_has(&err("{ interval: 10ms }"), &["services[0].probe.interval: between 100ms and 60s"]);
    assert_has(&err("{ rise: 0 }"), &["services[0].probe.rise: 0 is not between 1 and 100"]);
    assert_has(&err("{ every: 1s }"), &["every"]);
}

/// Values that parse but would break later (fast path v2, Build 3).
#[test]
fn values_that_would_break_later_are_refused_with_the_limit() {
    let with = |extra: &str| {
        let bad = format!("{GOOD}{extra}");
        config::parse(&bad, "bad.yaml").map(|_| ()).unwrap_err().to_string()
    };
    assert_has(&with("arp: { refresh: 200ms }\n"), &["bad.yaml:", "arp.refresh", "200 ms", "1000 ms minimum"]);
    assert_has(
        &with("sessions: { capacity: 1073741824 }\n"),
        &["bad.yaml:", "sessions.capacity", "MiB of session tables", "available"],
    );
    assert_has(
        &reject("{ ip: 198.18.0.21, port: 443 }", "{ ip: 198.18.0.1, port: 443 }"),
        &["bad.yaml:", "server_groups.api[0]", "198.18.0.1 is the address of ports[0]"],
    );
    assert_has(
        &reject("{ ip: 198.18.0.21, port: 443 }", "{ ip: 198.18.100.1, port: 443 }"),
        &["bad.yaml:", "198.18.100.1 is the VIP of service 'web'"],
    );
    let many: String = (100..161).map(|i| format!("    - {{ ip: 198.18.0.{i}, port: 443 }}\n")).collect();
    let big = GOOD
        .replacen("    scheduler: maglev\n", "    scheduler: maglev\n    maglev_table_size: 16777259\n", 1)
        .replacen("    - { ip: 198.18.0.21, port: 443 }\n", &many, 1);
    let m = config::parse(&big, "bad.yaml").map(|_| ()).unwrap_err().to_string();
    assert_has(&m, &["bad.yaml:", "maglev_table_size: 16777259 slots × 61 servers", "1000000000 limit"]);
    assert_has(
        &reject("  worker_cores: [1]\n", "  worker_cores: [1, 2, 3, 4, 5, 6, 7, 8]\n  memory_mb: 64\n"),
        &["eal.memory_mb: 64 MiB cannot hold", "8 workers", "hand-off rings"],
    );
    assert_has(
        &reject("    group: api\n", "    group: api\n    fragments: true\n"),
        &["bad.yaml:", "'api'.fragments", "protocol: udp, mode: dsr and scheduler: maglev"],
    );
}

/// What `ringlb check` prints is itself a valid configuration, and the same
/// one: rendering it again gives the same text. (Found by the config_yaml
/// fuzz target: the output once listed `servers:` under each service and
/// `mac: (from device)`, which no parser accepts.)
#[test]
fn the_effective_configuration_parses_back_to_itself() {
    let mut files: Vec<_> = ["../deploy", "../deploy/lab", "../fuzz/seeds/config_yaml"]
        .iter()
        .flat_map(|d| std::fs::read_dir(d).unwrap().map(|e| e.unwrap().path()))
        .filter(|p| p.extension().is_some_and(|x| x == "yaml"))
        .collect();
    files.sort();
    let mut checked = 0;
    for path in files {
        let text = std::fs::read_to_string(&path).unwrap();
        // Cluster configs name key files that exist only where they are deployed.
        let Ok(cfg) = config::parse(&text, &path.display().to_string()) else { continue };
        let once = cfg.render();
        let again = config::parse(&once, "rendered.yaml").unwrap_or_else(|e| panic!("{}: {e}\n{once}", path.display()));
        assert_eq!(again.render(), once, "{}", path.display());
        checked += 1;
    }
    assert!(checked >= 4, "only {checked} configurations checked");
}

/// Names and device strings with quotes, backslashes, control characters
/// and YAML punctuation survive the round trip (the config_yaml fuzz
/// target's second find: `{:?}` escapes such as `\u{b}` are not YAML).
#[test]
fn odd_strings_render_as_yaml_that_parses_back() {
    let odd = GOOD.replacen("\"net_af_packet0,iface=p0\"", "\"net_af_packet0,iface=p0\\v\\\"\\\\é: #x\"", 1).replacen(
        "name: web",
        "name: \"we: b #1\\t\"",
        1,
    );
    let cfg = config::parse(&odd, "odd.yaml").unwrap();
    assert_eq!(cfg.ports[0].device, "net_af_packet0,iface=p0\u{b}\"\\é: #x");
    assert_eq!(cfg.services[0].name, "we: b #1\t");
    let once = cfg.render();
    let again = config::parse(&once, "rendered.yaml").unwrap_or_else(|e| panic!("{e}\n{once}"));
    assert_eq!(again.ports[0].device, cfg.ports[0].device);
    assert_eq!(again.services[0].name, cfg.services[0].name);
    assert_eq!(again.render(), once);
}

#[test]
fn syn_proxy_is_refused_where_sequence_numbers_cannot_be_shifted() {
    // DSR: the server's replies bypass the appliance.
    assert_has(
        &reject("    mode: dsr\n    group: web", "    mode: dsr\n    syn_proxy: true\n    group: web"),
        &["bad.yaml:13:16", "services[0] 'web'.syn_proxy", "mode: nat", "bypass"],
    );
    // UDP has no handshake to answer.
    assert_has(
        &reject("    mode: nat\n", "    mode: nat\n    protocol: udp\n    syn_proxy: true\n"),
        &["bad.yaml:", "services[1] 'api'.syn_proxy", "protocol: tcp"],
    );
    assert_has(
        &reject("  worker_cores: [1]\n", "  worker_cores: [1]\nsessions: { capacity: 1000, proxied: 0 }\n"),
        &["bad.yaml:", "sessions.proxied: 0"],
    );
}

#[test]
fn syn_proxy_on_nat_is_accepted_and_rendered_back() {
    let text = GOOD.replacen("    mode: nat\n", "    mode: nat\n    syn_proxy: true\n", 1);
    let c = config::parse(&text, "good.yaml").unwrap();
    assert!(c.services[1].syn_proxy && !c.services[0].syn_proxy);
    assert_eq!(c.proxied_capacity, 1 << 16);
    let again = config::parse(&c.render(), "rendered.yaml").unwrap();
    assert!(again.services[1].syn_proxy, "render lost syn_proxy:\n{}", c.render());
}

/// GOOD with its first service made `mode: l7` with `rules` (YAML flow list items).
fn l7_config(rules: &str) -> String {
    GOOD.replacen("    mode: dsr\n    group: web", &format!("    mode: l7\n    group: web\n    l7:\n      rules:\n{rules}"), 1)
        .replacen("    - { ip: 198.18.0.11, port: 80 }", "    - { ip: 198.18.0.11, port: 8080 }", 1)
        .replacen("    - { ip: 198.18.0.12, port: 80, weight: 3 }", "    - { ip: 198.18.0.12, port: 8080, weight: 3 }", 1)
        .replacen(
            "server_groups:\n",
            "server_groups:\n  static:\n    - { ip: 198.18.0.31, port: 8080 }\n  gold:\n    - { ip: 198.18.0.41, port: 8080 }\n",
            1,
        )
}

#[test]
fn l7_rules_resolve_and_render_back() {
    let text = l7_config(
        "        - { path_prefix: /static/, group: static }\n        - { host: img.example.com, group: static }\n        - { header: { name: X-Tenant, value: gold }, group: gold }\n        - { cookie: { name: beta, value: \"1\" }, group: web }\n",
    );
    let text = text.replacen("    l7:\n", "    l7:\n      connect: race\n      fanout: 3\n      retries: 1\n", 1);
    let c = config::parse(&text, "l7.yaml").unwrap_or_else(|e| panic!("{e}\n{text}"));
    let l7 = c.services[0].l7.as_ref().expect("an l7 service");
    assert_eq!(
        (l7.redirect.fanout, l7.redirect.retries, l7.redirect.on_status.as_slice()),
        (3, 1, &[502, 503, 504][..])
    );
    let names: Vec<&str> = l7.groups.iter().map(|g| g.name.as_str()).collect();
    assert_eq!(names, ["web", "static", "gold"], "the default group first, then the rules' in order");
    assert_eq!(l7.rules.rules.len(), 4);
    assert_eq!(l7.rules.rules[2].group, 2);
    // Each group's members are the service's servers of that group.
    let ips: Vec<Vec<u32>> = l7
        .groups
        .iter()
        .map(|g| g.members.iter().map(|&p| c.servers[usize::from(c.services[0].servers[usize::from(p)])].ip).collect())
        .collect();
    assert_eq!(ips, [vec![0xc612_000b, 0xc612_000c], vec![0xc612_001f], vec![0xc612_0029]]);
    let again = config::parse(&c.render(), "rendered.yaml").unwrap_or_else(|e| panic!("{e}\n{}", c.render()));
    assert_eq!(again.services[0].l7, c.services[0].l7, "render changed the rules:\n{}", c.render());
    assert_eq!(again.services[0].mode, Mode::L7);
}

#[test]
fn l7_rules_are_checked_with_positions() {
    let parse = |rules: &str| match config::parse(&l7_config(rules), "bad.yaml") {
        Ok(_) => panic!("accepted bad rules {rules}"),
        Err(e) => e.to_string(),
    };
    assert_has(
        &parse("        - { path_prefix: /a/, group: nowhere }\n"),
        &["bad.yaml:16:38", "unknown server group 'nowhere'"],
    );
    assert_has(
        &parse("        - { path_prefix: /a, group: static }\n        - { path_prefix: /api, group: gold }\n"),
        &["bad.yaml:17:", "rules[1]: never matches: rules[0] (path_prefix: /a)"],
    );
    assert_has(&parse("        - { path_prefix: /a, host: x, group: static }\n"), &["bad.yaml:16:", "exactly one of"]);
    assert_has(&parse("        - { group: static }\n"), &["bad.yaml:16:", "exactly one of", "(has 0)"]);
    assert_has(
        &parse("        - { path_prefix: static, group: static }\n"),
        &["bad.yaml:16:", "does not start with '/'"],
    );
    // Rules on a service that is not l7.
    assert_has(
        &reject("    mode: nat\n", "    mode: nat\n    l7: { rules: [] }\n"),
        &["bad.yaml:18:9", "need mode: l7"],
    );
    // Redirect settings: error statuses only, a bounded number of retries.
    let bad = l7_config("        - { path_prefix: /a/, group: static }\n").replacen(
        "    l7:\n",
        "    l7:\n      redirect_on: [503, 200]\n",
        1,
    );
    assert_has(
        &config::parse(&bad, "bad.yaml").unwrap_err().to_string(),
        &["bad.yaml:15:20", "redirect_on: 200 is not an error status"],
    );
    let bad = l7_config("        - { path_prefix: /a/, group: static }\n").replacen(
        "    l7:\n",
        "    l7:\n      retries: 9\n",
        1,
    );
    assert_has(&config::parse(&bad, "bad.yaml").unwrap_err().to_string(), &["bad.yaml:15:16", "retries: 9 is over 8"]);
    // SYN multicast: race with a fan-out of 2 to 4 only.
    for (change, want) in [
        ("      connect: race\n      fanout: 5\n", "fanout: 5 is not between 2 and 4"),
        ("      fanout: 2\n", "fanout: only with connect: race"),
        ("      connect: all\n", "connect: 'all' is neither first nor race"),
    ] {
        let bad = l7_config("        - { path_prefix: /a/, group: static }\n").replacen(
            "    l7:\n",
            &format!("    l7:\n{change}"),
            1,
        );
        assert_has(&config::parse(&bad, "bad.yaml").unwrap_err().to_string(), &["bad.yaml:", want]);
    }
    // l7 is HTTP over TCP, scheduled by wrr per group.
    let maglev = l7_config("").replacen("    mode: l7\n", "    mode: l7\n    scheduler: maglev\n", 1);
    assert_has(
        &config::parse(&maglev, "bad.yaml").unwrap_err().to_string(),
        &["bad.yaml:9:11", "mode: l7 needs scheduler: wrr"],
    );
}

#[test]
fn syn_cookie_key_file_is_read_and_checked() {
    let text = format!("{GOOD}syn_cookies: {{ key_file: /nonexistent/cookie.key }}\n");
    assert_has(
        &config::parse(&text, "bad.yaml").unwrap_err().to_string(),
        &["bad.yaml:26:26", "syn_cookies.key_file: /nonexistent/cookie.key"],
    );
    let dir = std::env::temp_dir().join(format!("ringlb-cookie-key-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let key = dir.join("cookie.key");
    std::fs::write(&key, "0123456789abcdef".repeat(4)).unwrap();
    std::fs::set_permissions(&key, std::os::unix::fs::PermissionsExt::from_mode(0o644)).unwrap();
    let text = format!("{GOOD}syn_cookies: {{ key_file: {} }}\n", key.display());
    assert_has(&config::parse(&text, "bad.yaml").unwrap_err().to_string(), &["syn_cookies.key_file", "chmod 600"]);
    std::fs::set_permissions(&key, std::os::unix::fs::PermissionsExt::from_mode(0o600)).unwrap();
    let c = config::parse(&text, "good.yaml").unwrap();
    assert_eq!(c.syn_cookie_secret.as_ref().map(|s| s.0.len()), Some(64));
    let again = config::parse(&c.render(), "rendered.yaml").unwrap();
    assert_eq!(again.syn_cookie_key_file, c.syn_cookie_key_file);
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn a_kernel_interface_needs_a_port_mac_and_a_valid_name_and_bird_an_absolute_file() {
    let ip = "    ip: 198.18.0.1/24\n";
    let m = reject(ip, &format!("{ip}    kernel: {{ tap: rlbk0 }}\n"));
    assert_has(&m, &["bad.yaml:", "ports[0].kernel: needs ports[0].mac"]);
    let with_mac = format!("{ip}    mac: \"02:00:00:00:00:01\"\n");
    let m = reject(ip, &format!("{with_mac}    kernel: {{ tap: \"no way/this\" }}\n"));
    assert_has(&m, &["bad.yaml:", "ports[0].kernel.tap: 'no way/this' is not an interface name"]);
    let good = GOOD.replacen(ip, &format!("{with_mac}    kernel: {{ tap: rlbk0 }}\n"), 1);
    let cfg = config::parse(&good, "good.yaml").unwrap();
    let k = cfg.ports[0].kernel.as_ref().unwrap();
    assert_eq!((k.tap.as_str(), k.configure), ("rlbk0", true));
    // The effective configuration says so, and parses back the same.
    assert!(cfg.render().contains("kernel: { tap: \"rlbk0\", configure: true }"), "{}", cfg.render());
    assert_eq!(config::parse(&cfg.render(), "r.yaml").unwrap().version(), cfg.version());
    let m = reject("server_groups:", "bird: { vips_file: vips.conf }\nserver_groups:");
    assert_has(&m, &["bad.yaml:", "bird.vips_file: give an absolute path"]);
    let bird =
        GOOD.replacen("server_groups:", "bird: { vips_file: /run/v.conf, socket: /run/b.ctl }\nserver_groups:", 1);
    let b = config::parse(&bird, "b.yaml").unwrap().bird.unwrap();
    assert_eq!((b.vips_file.as_str(), b.socket.as_deref()), ("/run/v.conf", Some("/run/b.ctl")));
}
