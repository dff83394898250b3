//! Each binary's hidden `--completions SHELL` and `--man` (shared::cli::parse),
//! as a packager runs them (deploy/dist.sh): no config file, nothing started.
//! The bash script parses (`bash -n`) and offers the binary's real flags; the
//! man page is roff titled with the binary's name, lists its flags, and
//! renders with `man -l` (or groff) when either is installed.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::io::Write;
use std::process::{Command, Output, Stdio};

/// Each binary and flags of its own that both outputs must name.
const BINARIES: [(&str, &[&str]); 5] = [
    ("discovery", &["--config", "--listen", "--check-config"]),
    (
        "gateway",
        &["--config", "--listen", "--admin-listen", "--discovery-url"],
    ),
    ("app", &["--config", "--port", "--discovery-url", "--chaos"]),
    (
        "loadtest",
        &["--duration", "--connections", "--rate", "--chaos"],
    ),
    ("up", &["--config-dir", "--free-ports", "--apps", "--state"]),
];

/// `bin args` run to its end with no config anywhere near, from an empty
/// environment for logging; asserts exit 0 and nothing on stderr (no
/// logging started, so no service started).
fn printed(bin: &str, args: &[&str]) -> String {
    let out = Command::new(testkit::procs::bin(bin))
        .args(args)
        .env_remove("LOG_LEVEL")
        .env_remove("LOG_FORMAT")
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "{bin} {args:?}: {:?}\n{stderr}",
        out.status
    );
    assert!(
        stderr.is_empty(),
        "{bin} {args:?} wrote to stderr:\n{stderr}"
    );
    String::from_utf8(out.stdout).unwrap()
}

/// Runs `program args` with `input` on its stdin.
fn piped(program: &str, args: &[&str], input: &str) -> std::io::Result<Output> {
    let mut child = Command::new(program)
        .args(args)
        .env("MANPAGER", "cat")
        .env("PAGER", "cat")
        .env("MANWIDTH", "80")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()?;
    let mut stdin = child.stdin.take().unwrap();
    let text = input.to_string();
    let writer = std::thread::spawn(move || {
        let _ = stdin.write_all(text.as_bytes());
    });
    let out = child.wait_with_output();
    let _ = writer.join();
    out
}

/// Whether `program --version` runs and its first line starts with `name`.
fn installed(program: &str, name: &str) -> bool {
    Command::new(program)
        .arg("--version")
        .stdin(Stdio::null())
        .output()
        .is_ok_and(|o| {
            o.status.success()
                && String::from_utf8_lossy(&o.stdout)
                    .to_lowercase()
                    .starts_with(name)
        })
}

#[test]
fn bash_completion_parses_and_names_the_flags() {
    for (bin, flags) in BINARIES {
        let script = printed(bin, &["--completions", "bash"]);
        let checked = piped("bash", &["-n"], &script).unwrap();
        assert!(
            checked.status.success(),
            "{bin}: bash -n: {}",
            String::from_utf8_lossy(&checked.stderr)
        );
        assert!(script.contains(&format!("complete -F _{bin} ")), "{bin}");
        for flag in flags {
            assert!(
                script.contains(flag),
                "{bin}'s bash completion lacks {flag}"
            );
        }
        // The hidden flags stay out of what a user is offered.
        assert!(!script.contains("--completions"), "{bin}");
    }
}

#[test]
fn zsh_and_fish_completions_are_printed() {
    for (bin, flags) in BINARIES {
        let zsh = printed(bin, &["--completions", "zsh"]);
        assert!(zsh.starts_with(&format!("#compdef {bin}")), "{bin}:\n{zsh}");
        let fish = printed(bin, &["--completions", "fish"]);
        assert!(fish.contains(&format!("complete -c {bin} ")), "{bin}");
        for flag in flags {
            assert!(zsh.contains(flag), "{bin}'s zsh completion lacks {flag}");
            let long = flag.trim_start_matches("--");
            assert!(
                fish.contains(&format!("-l {long}")),
                "{bin}: fish lacks {flag}"
            );
        }
        for (shell, text) in [("zsh", &zsh), ("fish", &fish)] {
            if !installed(shell, shell) {
                continue;
            }
            let checked = piped(shell, &["-n"], text).unwrap();
            assert!(
                checked.status.success(),
                "{bin}: {shell} -n: {}",
                String::from_utf8_lossy(&checked.stderr)
            );
        }
        // elvish and powershell: printed, not checked (no interpreter here).
        assert!(!printed(bin, &["--completions", "elvish"]).is_empty());
        assert!(!printed(bin, &["--completions", "powershell"]).is_empty());
    }
}

#[test]
fn man_page_is_titled_with_the_binary_and_lists_its_flags() {
    let renderer = if installed("man", "man") {
        Some(("man", vec!["-l", "-"]))
    } else if installed("groff", "gnu groff") || installed("groff", "groff") {
        Some(("groff", vec!["-man", "-Tutf8"]))
    } else {
        eprintln!(
            "neither man nor groff is installed: the pages are checked as text, not rendered"
        );
        None
    };
    for (bin, flags) in BINARIES {
        let page = printed(bin, &["--man"]);
        let lines: Vec<&str> = page.lines().collect();
        let title = lines
            .iter()
            .position(|l| l.starts_with(".TH "))
            .unwrap_or_else(|| panic!("{bin}: no .TH line:\n{page}"));
        // Only clap_mangen's definition of the quote string comes before it.
        assert!(
            lines[..title]
                .iter()
                .all(|l| l.starts_with(".ie ") || l.starts_with(".el ")),
            "{bin}:\n{page}"
        );
        assert!(
            lines[title].starts_with(&format!(".TH {bin} 1 ")),
            "{bin}: {}",
            lines[title]
        );
        let text = page.replace("\\-", "-");
        for flag in flags {
            assert!(text.contains(flag), "{bin}'s man page lacks {flag}");
        }
        assert!(!text.contains("--completions"), "{bin}");
        let Some((program, args)) = &renderer else {
            continue;
        };
        let shown = piped(program, args, &page).unwrap();
        let shown_text = String::from_utf8_lossy(&shown.stdout);
        assert!(
            shown.status.success() && shown_text.contains("OPTIONS"),
            "{bin}: {program} {args:?}: {:?}\n{shown_text}\n{}",
            shown.status,
            String::from_utf8_lossy(&shown.stderr)
        );
        assert!(shown_text.contains(bin), "{bin}: {program}:\n{shown_text}");
        assert!(
            shown_text.contains(flags[0]),
            "{bin}: {program}:\n{shown_text}"
        );
    }
}

/// The two flags print and exit before anything reads a config or binds;
/// with another flag they are an error (so a typo cannot start a service).
#[test]
fn the_flags_are_exclusive() {
    let out = Command::new(testkit::procs::bin("discovery"))
        .args(["--man", "--listen", "127.0.0.1:0"])
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    assert!(out.stdout.is_empty());
    let out = Command::new(testkit::procs::bin("app"))
        .args(["--completions", "tcsh"])
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2), "{out:?}");
}
