//! No crate's modules import each other in a circle (testkit::layers says
//! what counts as an import). A failure lists every cycle as a chain,
//! `a -> b -> c -> a`, with the file and line of each edge: break it by moving
//! what the lower module needs below both.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::{Path, PathBuf};
use testkit::layers::{check, cycles, graph, name};
use testkit::tempdir::TempDir;

/// The crates checked, by folder under the workspace root.
const CRATES: &[&str] = &["discovery", "app", "shared", "loadtest", "up"];

/// The gateway is checked too once this is `true`: off while gateway/src is
/// being restructured.
const CHECK_GATEWAY: bool = true;

fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf()
}

#[test]
fn no_crate_imports_in_a_circle() {
    let root = workspace();
    let mut crates = CRATES.to_vec();
    if CHECK_GATEWAY {
        crates.push("gateway");
    }
    let failures: Vec<String> = crates
        .iter()
        .filter_map(|c| check(c, &root.join(c).join("src"), &root).err())
        .collect();
    assert!(failures.is_empty(), "\n{}", failures.join("\n"));
}

// The checker itself, on small trees written to a temporary folder.

fn tree(files: &[(&str, &str)]) -> TempDir {
    let dir = TempDir::new("testkit-layers");
    for (path, text) in files {
        let path = dir.join(path);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, text).unwrap();
    }
    dir
}

fn chains(dir: &Path) -> Vec<String> {
    cycles(&graph(dir).unwrap())
        .0
        .iter()
        .map(|c| c.chain())
        .collect()
}

#[test]
fn a_cycle_is_found_with_each_edge_placed() {
    let dir = tree(&[
        ("lib.rs", "mod a;\nmod b;\nmod c;\n"),
        ("a.rs", "use crate::b::B;\npub struct A;\n"),
        ("b.rs", "pub struct B;\n\nfn f() { crate::c::g(); }\n"),
        ("c.rs", "pub fn g() {}\nuse crate::{a::{self, A}};\n"),
    ]);
    assert_eq!(chains(&dir), ["a -> b -> c -> a"]);
    let report = check("t", &dir, &dir).unwrap_err();
    assert!(report.contains("a -> b: a.rs:1 (crate::b::B)"), "{report}");
    assert!(report.contains("b -> c: b.rs:3 (crate::c::g)"), "{report}");
    assert!(report.contains("c -> a: c.rs:2 (crate::a)"), "{report}");
}

#[test]
fn every_cycle_is_listed_and_a_clean_layering_passes() {
    // Two cycles through `hub`: hub <-> x and hub -> y -> z -> hub.
    let dir = tree(&[
        ("lib.rs", "mod hub; mod x; mod y; mod z;\nuse hub::Hub;\n"),
        ("hub.rs", "use crate::{x::X, y::Y};\npub struct Hub;\n"),
        ("x.rs", "pub struct X(crate::Hub);\n"),
        ("y.rs", "use crate::z::Z;\n"),
        ("z.rs", "use crate::hub;\n"),
    ]);
    assert_eq!(chains(&dir), ["hub -> x -> hub", "hub -> y -> z -> hub"]);
    // `crate::Hub` is an item of the root, brought in from `hub`: x depends on both.
    let report = check("t", &dir, &dir).unwrap_err();
    assert!(
        report.contains("x -> hub: x.rs:1 (crate::Hub, through the `use` in crate)"),
        "{report}"
    );

    let layered = tree(&[
        (
            "lib.rs",
            "use crate::top::Top;\nmod low; mod mid; mod top;\n",
        ),
        ("low.rs", "pub struct Low;\n"),
        ("mid.rs", "use crate::low::Low;\npub struct Mid(Low);\n"),
        (
            "top.rs",
            "use crate::{low, mid::Mid};\npub struct Top(Mid, low::Low);\n",
        ),
    ]);
    assert!(check("t", &layered, &layered).is_ok());
}

#[test]
fn comments_strings_and_test_code_are_ignored() {
    let dir = tree(&[
        ("lib.rs", "mod a; mod b;\n"),
        (
            "a.rs",
            "//! Sits below [`crate::b::B`].\n\
             /// Not [`crate::b`] either.\n\
             pub struct A; // crate::b::B\n\
             /* crate::b::B */\n\
             const S: &str = \"crate::b::B\";\n\
             const R: &str = r#\"crate::b::B\"#;\n\
             const C: char = '\"'; const L: &str = \"x\"; fn f<'a>(_: &'a str) {}\n\
             #[cfg(test)]\n\
             mod tests {\n    use crate::b::B;\n    #[test]\n    fn t() { let _ = B; }\n}\n",
        ),
        ("b.rs", "use crate::a::A;\npub struct B(A);\n"),
    ]);
    assert_eq!(chains(&dir), Vec::<String>::new());
    // The same edge in code does close the circle.
    std::fs::write(
        dir.join("a.rs"),
        "pub struct A;\nfn f() -> crate::b::B { todo!() }\n",
    )
    .unwrap();
    assert_eq!(chains(&dir), ["a -> b -> a"]);
}

#[test]
fn a_test_module_in_its_own_file_is_no_node() {
    let dir = tree(&[
        ("lib.rs", "mod a; mod b;\n"),
        ("a.rs", "pub struct A;\n#[cfg(test)]\nmod tests;\n"),
        ("a/tests.rs", "use crate::b::B;\n"),
        ("b.rs", "use crate::a::A;\n"),
    ]);
    let g = graph(&dir).unwrap();
    assert!(!g.files.keys().any(|m| name(m) == "a::tests"));
    assert_eq!(chains(&dir), Vec::<String>::new());
}

#[test]
fn folders_super_and_the_longest_module_prefix() {
    let dir = tree(&[
        ("lib.rs", "pub mod store; pub mod etcd;\n"),
        // A folder's mod.rs names its children: no edge. Naming a neighbour's is one.
        (
            "store/mod.rs",
            "mod memory;\npub use memory::Memory;\npub use self::memory::Other;\npub use crate::etcd::store::EtcdStore;\npub trait Store {}\n",
        ),
        ("store/memory.rs", "use super::Store;\npub struct Memory;\n"),
        ("etcd/mod.rs", "pub mod store;\n"),
        ("etcd/store.rs", "use super::super::store::Store;\npub struct EtcdStore;\n"),
    ]);
    let g = graph(&dir).unwrap();
    let edges: Vec<String> = g
        .edges
        .iter()
        .flat_map(|(a, to)| {
            to.keys()
                .map(move |b| format!("{} -> {}", name(a), name(b)))
        })
        .collect();
    assert_eq!(
        edges,
        [
            "etcd::store -> store",
            "store -> etcd::store",
            "store::memory -> store"
        ]
    );
    assert_eq!(chains(&dir), ["etcd::store -> store -> etcd::store"]);
}

#[test]
fn multi_line_use_trees_are_read_whole() {
    let dir = tree(&[
        ("main.rs", "mod a; mod b; mod c;\n"),
        (
            "a.rs",
            "use crate::{\n    b::{self, B},\n    c::{C as D},\n};\n",
        ),
        ("b.rs", "pub struct B;\n"),
        (
            "c.rs",
            "pub struct C;\npub fn f() {\n    super::a::g();\n}\n",
        ),
    ]);
    let g = graph(&dir).unwrap();
    let a_to: Vec<String> = g.edges[&vec!["a".to_string()]]
        .keys()
        .map(|m| name(m))
        .collect();
    assert_eq!(a_to, ["b", "c"]);
    let site = &g.edges[&vec!["c".to_string()]][&vec!["a".to_string()]][0];
    assert_eq!((site.line, site.path.as_str()), (3, "super::a::g"));
    assert_eq!(chains(&dir), ["a -> c -> a"]);
}
