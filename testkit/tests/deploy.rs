//! The deployment files (deploy/, docs/deploy.md) checked offline: the
//! systemd units by `systemd-analyze verify` and its offline security score,
//! the example configs by the services' own config loader, the compose files
//! and the Containerfile by their structure and by asking each binary whether
//! it takes the flags they pass. Nothing here starts systemd or a container
//! engine (neither runs on CI's machine); docs/deploy.md says what is left.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Command;
use testkit::tempdir::TempDir;

const SERVICES: [&str; 3] = ["discovery", "gateway", "app"];

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// `systemd-analyze`, or a failure that says how to get it.
fn systemd_analyze() -> Command {
    let found = Command::new("systemd-analyze")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success());
    assert!(
        found,
        "systemd-analyze is missing: the unit checks need it (no running systemd). \
         Run `bash .ci/install-systemd` (Debian: apt-get install systemd); `just test` does."
    );
    Command::new("systemd-analyze")
}

/// A unit's `Key=value` lines, section by section, in order (comments and
/// blank lines left out; a key may repeat, as systemd allows).
fn unit_entries(text: &str) -> Vec<(String, String, String)> {
    let mut section = String::new();
    let mut entries = Vec::new();
    for line in text.lines().map(str::trim) {
        if line.is_empty() || line.starts_with('#') || line.starts_with(';') {
            continue;
        }
        if let Some(name) = line.strip_prefix('[').and_then(|l| l.strip_suffix(']')) {
            section = name.to_string();
            continue;
        }
        let (key, value) = line
            .split_once('=')
            .unwrap_or_else(|| panic!("not Key=value: {line:?}"));
        entries.push((section.clone(), key.to_string(), value.to_string()));
    }
    entries
}

fn values<'a>(entries: &'a [(String, String, String)], key: &str) -> Vec<&'a str> {
    entries
        .iter()
        .filter(|(section, k, _)| section == "Service" && k == key)
        .map(|(_, _, v)| v.as_str())
        .collect()
}

fn one<'a>(entries: &'a [(String, String, String)], unit: &str, key: &str) -> &'a str {
    let found = values(entries, key);
    assert_eq!(found.len(), 1, "{unit}: [Service] {key}= set {found:?}");
    found[0]
}

/// Each unit as systemd reads it: `systemd-analyze verify` on a copy whose
/// ExecStart names the workspace's built binary (verify wants the executable
/// to exist; the units name the install path /usr/local/bin), which must
/// succeed without a word about our files (unknown keys and bad values are
/// only warnings, exit 0), then the offline security score.
#[test]
fn units_pass_systemd_analyze_verify_and_security() {
    systemd_analyze();
    let scratch = TempDir::new("deploy-units");
    let mut copies = Vec::new();
    for name in SERVICES {
        let text = read(&root().join(format!("deploy/systemd/{name}.service")));
        let exec = format!("ExecStart=/usr/local/bin/{name} --config /etc/{name}/{name}.json");
        assert_eq!(
            text.lines()
                .filter(|l| l.starts_with("ExecStart="))
                .collect::<Vec<_>>(),
            [exec.as_str()],
            "{name}.service: ExecStart must run the installed binary on /etc/{name}/{name}.json"
        );
        let built = testkit::procs::bin(name);
        let built = built.to_str().unwrap();
        assert!(
            !built.contains(char::is_whitespace),
            "path with blanks: {built}"
        );
        let copy = scratch.join(format!("{name}.service"));
        let from = format!("ExecStart=/usr/local/bin/{name} ");
        std::fs::write(&copy, text.replace(&from, &format!("ExecStart={built} "))).unwrap();
        copies.push(copy);
    }

    let out = systemd_analyze()
        .arg("verify")
        .args(&copies)
        .env("SYSTEMD_LOG_COLOR", "0")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    let ours: Vec<&str> = stderr
        .lines()
        .filter(|l| {
            l.contains(scratch.to_str().unwrap())
                || SERVICES.iter().any(|n| l.contains(&format!("{n}.service")))
        })
        .collect();
    assert!(
        out.status.success() && ours.is_empty(),
        "systemd-analyze verify ({}):\n{stderr}{}",
        out.status,
        String::from_utf8_lossy(&out.stdout)
    );

    // Exposure score 0 (locked down) to 10 (unsandboxed); the units score
    // 1.4 with systemd 252. --threshold fails above 2.0.
    for copy in &copies {
        let out = systemd_analyze()
            .args(["security", "--offline=yes", "--threshold=20", "--no-pager"])
            .arg(copy)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "systemd-analyze security {}: exposure above 2.0 ({}):\n{}{}",
            copy.display(),
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

/// The settings docs/deploy.md promises, present in every unit (verify
/// above only says they parse).
#[test]
fn units_are_hardened_and_restart_on_failure() {
    for name in SERVICES {
        let unit = format!("{name}.service");
        let entries = unit_entries(&read(&root().join(format!("deploy/systemd/{unit}"))));
        for (key, want) in [
            ("Type", "exec"),
            ("DynamicUser", "yes"),
            ("ProtectSystem", "strict"),
            ("ProtectHome", "yes"),
            ("PrivateTmp", "yes"),
            ("NoNewPrivileges", "yes"),
            ("CapabilityBoundingSet", ""),
            ("AmbientCapabilities", ""),
            ("RestrictAddressFamilies", "AF_INET AF_INET6 AF_UNIX"),
            ("Restart", "on-failure"),
            ("Environment", "LOG_FORMAT=json"),
        ] {
            assert_eq!(one(&entries, &unit, key), want, "{unit}: {key}");
        }
        assert_eq!(one(&entries, &unit, "User"), format!("rr-{name}"), "{unit}");
        assert_eq!(
            one(&entries, &unit, "EnvironmentFile"),
            format!("-/etc/{name}/{name}.env"),
            "{unit}: secrets come from an optional root-only file"
        );
        assert_eq!(
            values(&entries, "SystemCallFilter"),
            ["@system-service", "~@privileged"],
            "{unit}"
        );
        let restart_sec = one(&entries, &unit, "RestartSec");
        let restart_sec = shared::config::parse_duration(restart_sec).unwrap();
        assert!(
            (1..=30).contains(&restart_sec.as_secs()),
            "{unit}: RestartSec {restart_sec:?}"
        );
        // 10,000 clients through the gateway: a client and an upstream
        // descriptor each, plus pools, listeners and a margin.
        let nofile: u64 = one(&entries, &unit, "LimitNOFILE").parse().unwrap();
        assert!(nofile >= 25_000, "{unit}: LimitNOFILE {nofile}");
        let reload = values(&entries, "ExecReload");
        if name == "gateway" {
            assert_eq!(
                reload,
                ["/bin/kill -HUP $MAINPID"],
                "{unit}: SIGHUP reloads"
            );
        } else {
            assert!(
                reload.is_empty(),
                "{unit}: only the gateway reloads: {reload:?}"
            );
        }
    }
}

/// The example configs load and validate as the services would at start.
#[test]
fn example_configs_load_and_validate() {
    use shared::config::{load, AppConfig, DiscoveryConfig, GatewayConfig};
    let dir = root().join("deploy");
    let discovery = [
        dir.join("config/discovery.json"),
        dir.join("container/cluster/discovery-1.json"),
        dir.join("container/cluster/discovery-2.json"),
    ];
    for path in &discovery {
        let config: DiscoveryConfig = load(Some(path)).unwrap();
        config
            .validate()
            .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    }
    let path = dir.join("config/gateway.json");
    let gateway: GatewayConfig = load(Some(&path)).unwrap();
    gateway.validate().unwrap();
    let path = dir.join("config/app.json");
    let app: AppConfig = load(Some(&path)).unwrap();
    app.validate().unwrap();
    // Only the gateway's client port is meant for clients.
    assert!(gateway.admin_listen.starts_with("127.0.0.1:"));
    assert!(app.bind == "127.0.0.1");
}

/// The services of a compose file, and for each the one-line `["..."]` lists
/// of its entrypoint and command (valid JSON as written).
fn compose_services(text: &str) -> Vec<(String, Vec<String>, Vec<String>)> {
    let mut services: Vec<(String, Vec<String>, Vec<String>)> = Vec::new();
    let mut anchors: std::collections::HashMap<String, usize> = Default::default();
    let mut in_services = false;
    for line in text.lines() {
        if !line.starts_with(' ') && !line.trim().is_empty() && !line.starts_with('#') {
            in_services = line == "services:";
            continue;
        }
        if !in_services {
            continue;
        }
        let json_list = |key: &str| -> Option<Vec<String>> {
            let rest = line.trim().strip_prefix(key)?.trim();
            Some(serde_json::from_str(rest).unwrap_or_else(|e| panic!("{line:?}: {e}")))
        };
        if let Some(entry) = line
            .strip_prefix("  ")
            .filter(|l| !l.starts_with([' ', '#']))
        {
            let (name, rest) = entry.split_once(':').unwrap();
            // `app2: *app` is the service anchored `app1: &app` again.
            let same = rest.trim().strip_prefix('*').map(|alias| {
                let (_, entrypoint, command) = &services[anchors[alias]];
                (entrypoint.clone(), command.clone())
            });
            if let Some(anchor) = rest.trim().strip_prefix('&') {
                anchors.insert(anchor.to_string(), services.len());
            }
            let (entrypoint, command) = same.unwrap_or_default();
            services.push((name.to_string(), entrypoint, command));
        } else if let Some(list) = json_list("entrypoint:") {
            services.last_mut().unwrap().1 = list;
        } else if let Some(list) = json_list("command:") {
            services.last_mut().unwrap().2 = list;
        }
    }
    services
}

/// Each compose file runs the services it promises, and every flag it gives a
/// binary of ours is one the binary takes: `BINARY <flags> --help` exits 0
/// only if every flag before `--help` parsed (clap stops at the first unknown
/// flag or bad value). Config files mounted from the host exist.
#[test]
fn compose_files_run_the_services_with_flags_the_binaries_take() {
    let dir = root().join("deploy/container");
    for (file, want) in [
        ("compose.yaml", "discovery app1 app2 app3 gateway"),
        (
            "compose-cluster.yaml",
            "etcd1 etcd2 etcd3 discovery-1 discovery-2 app1 app2 app3 gateway",
        ),
    ] {
        let text = read(&dir.join(file));
        let services = compose_services(&text);
        let names: Vec<&str> = services.iter().map(|s| s.0.as_str()).collect();
        assert_eq!(names.join(" "), want, "{file}: services");
        for (service, _, command) in &services {
            if service.starts_with("etcd") {
                continue;
            }
            // The entrypoint may come from an anchor: the config path names the binary.
            let config = command
                .iter()
                .skip_while(|a| *a != "--config")
                .nth(1)
                .unwrap_or_else(|| panic!("{file}: {service} has no --config: {command:?}"));
            let binary = Path::new(config).file_stem().unwrap().to_str().unwrap();
            assert!(SERVICES.contains(&binary), "{file}: {service}: {config}");
            assert!(
                text.contains(&format!("entrypoint: [\"/usr/local/bin/{binary}\"]")),
                "{file}: no entrypoint for {binary}"
            );
            let out = Command::new(testkit::procs::bin(binary))
                .args(command)
                .arg("--help")
                .output()
                .unwrap();
            assert!(
                out.status.success(),
                "{file}: {service}: {binary} {command:?} is refused:\n{}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        for line in text
            .lines()
            .filter(|l| l.trim().starts_with("volumes: [\"./"))
        {
            let mount = line.split('"').nth(1).unwrap();
            let source = mount.split(':').next().unwrap();
            assert!(dir.join(source).is_file(), "{file}: {source} is missing");
        }
    }
}

/// The Containerfile copies every workspace member (cargo refuses a
/// workspace with one missing) and every file it names exists; its ignore
/// file lets them through.
#[test]
fn containerfile_copies_the_whole_workspace() {
    let manifest = read(&root().join("Cargo.toml"));
    let members_line = manifest
        .lines()
        .find(|l| l.starts_with("members = ["))
        .expect("a one-line members list in Cargo.toml");
    let members: Vec<String> =
        serde_json::from_str(members_line.trim_start_matches("members = ")).unwrap();
    let containerfile = read(&root().join("deploy/container/Containerfile"));
    let ignore = read(&root().join("deploy/container/Containerfile.dockerignore"));
    let allowed: BTreeSet<&str> = ignore.lines().filter_map(|l| l.strip_prefix('!')).collect();
    for member in &members {
        assert!(
            containerfile.contains(&format!("\nCOPY {member} {member}\n")),
            "Containerfile does not copy workspace member {member}"
        );
    }
    for line in containerfile.lines().filter(|l| l.starts_with("COPY ")) {
        let words: Vec<&str> = line.split_whitespace().collect();
        if words[1].starts_with("--from=") {
            continue;
        }
        for source in &words[1..words.len() - 1] {
            assert!(
                root().join(source).exists(),
                "Containerfile: {source} is missing"
            );
            assert!(
                allowed.iter().any(|a| source.starts_with(a)),
                "Containerfile.dockerignore keeps out {source}"
            );
        }
    }
}

/// `just dist`'s script parses, and the archive's parts exist (the archive
/// itself: `dist_archive_holds_binaries_completions_and_man_pages`).
#[test]
fn dist_script_parses_and_its_inputs_exist() {
    let script = root().join("deploy/dist.sh");
    let out = Command::new("bash")
        .arg("-n")
        .arg(&script)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    for part in [
        "LICENSE",
        "README.md",
        "docs/deploy.md",
        "deploy/config",
        "deploy/systemd",
        "deploy/container",
    ] {
        assert!(root().join(part).exists(), "{part} is missing");
    }
    let license = read(&root().join("LICENSE"));
    assert!(license.starts_with("MIT License"), "LICENSE is not MIT");
    let manifest = read(&root().join("Cargo.toml"));
    assert!(
        manifest.contains("\nlicense = \"MIT\"\n"),
        "Cargo.toml's license is not MIT"
    );
}

/// Every binary of the release archive.
const BINARIES: [&str; 5] = ["discovery", "gateway", "app", "up", "loadtest"];

/// `deploy/dist.sh` packs, beside each binary, the bash, zsh and fish
/// completions and the man page it prints. Run on the debug build (through
/// small wrappers: gzip on five debug binaries takes long) with
/// DIST_BIN_DIR, into a temporary DIST_OUT.
#[test]
fn dist_archive_holds_binaries_completions_and_man_pages() {
    let wrappers = TempDir::new("deploy-dist-bin");
    for b in BINARIES {
        let built = testkit::procs::bin(b);
        let wrapper = wrappers.join(b);
        std::fs::write(
            &wrapper,
            format!("#!/bin/sh\nexec '{}' \"$@\"\n", built.display()),
        )
        .unwrap();
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&wrapper, std::fs::Permissions::from_mode(0o755)).unwrap();
    }
    let out = TempDir::new("deploy-dist-out");
    let run = Command::new("bash")
        .arg(root().join("deploy/dist.sh"))
        .env("DIST_BIN_DIR", wrappers.path())
        .env("DIST_OUT", out.path())
        .output()
        .unwrap();
    assert!(
        run.status.success(),
        "dist.sh failed:\n{}\n{}",
        String::from_utf8_lossy(&run.stdout),
        String::from_utf8_lossy(&run.stderr)
    );
    let archive = std::fs::read_dir(&out)
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| p.to_string_lossy().ends_with(".tar.gz"))
        .expect("dist.sh wrote no .tar.gz");
    let listed = Command::new("tar")
        .arg("-tzf")
        .arg(&archive)
        .output()
        .unwrap();
    assert!(listed.status.success(), "tar -tzf {}", archive.display());
    let entries: BTreeSet<String> = String::from_utf8(listed.stdout)
        .unwrap()
        .lines()
        .map(|l| l.split_once('/').map_or("", |(_, rest)| rest).to_string())
        .collect();
    let prefix = archive
        .file_name()
        .unwrap()
        .to_str()
        .unwrap()
        .trim_end_matches(".tar.gz")
        .to_string();
    for b in BINARIES {
        for part in [
            format!("bin/{b}"),
            format!("completions/bash/{b}"),
            format!("completions/zsh/_{b}"),
            format!("completions/fish/{b}.fish"),
            format!("man/man1/{b}.1"),
        ] {
            assert!(
                entries.contains(&part),
                "{prefix}/{part} missing: {entries:?}"
            );
        }
        // What was packed is what the binary prints, not an empty file.
        let page = Command::new("tar")
            .arg("-xzOf")
            .arg(&archive)
            .arg(format!("{prefix}/man/man1/{b}.1"))
            .output()
            .unwrap();
        let page = String::from_utf8(page.stdout).unwrap();
        assert!(
            page.lines().any(|l| l.starts_with(&format!(".TH {b} 1 "))),
            "{b}.1:\n{page}"
        );
        let bash = Command::new("tar")
            .arg("-xzOf")
            .arg(&archive)
            .arg(format!("{prefix}/completions/bash/{b}"))
            .output()
            .unwrap();
        let bash = String::from_utf8(bash.stdout).unwrap();
        assert!(bash.contains(&format!("complete -F _{b} ")), "{b}:\n{bash}");
    }
    for part in [
        "LICENSE",
        "README.md",
        "docs/deploy.md",
        "deploy/systemd/gateway.service",
    ] {
        assert!(entries.contains(part), "{prefix}/{part} missing");
    }
}
