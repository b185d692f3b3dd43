//! The generated files under `contrib/` (shell completions, the man page) match what the binary
//! generates from its flags now, so a new or changed flag cannot leave them stale.

use std::path::Path;
use std::process::{Command, Stdio};

/// What the binary prints to stdout when run with `args`, byte for byte.
fn generated(args: &[&str]) -> Vec<u8> {
    let out = Command::new(env!("CARGO_BIN_EXE_epoll-echo"))
        .args(args)
        .stdin(Stdio::null())
        .output()
        .expect("run the epoll-echo binary");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{args:?}: {:?} {stderr}", out.status);
    out.stdout
}

#[test]
fn committed_completions_and_man_page_match_the_flags() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let cases: [(&[&str], &str); 4] = [
        (
            &["--completions", "bash"],
            "contrib/completions/epoll-echo.bash",
        ),
        (&["--completions", "zsh"], "contrib/completions/_epoll-echo"),
        (
            &["--completions", "fish"],
            "contrib/completions/epoll-echo.fish",
        ),
        (&["--man"], "contrib/man/epoll-echo.1"),
    ];
    for (args, file) in cases {
        let committed = std::fs::read(root.join(file)).unwrap_or_else(|e| panic!("{file}: {e}"));
        let fresh = generated(args);
        assert!(
            committed == fresh,
            "{file} differs from what the flags generate; regenerate it with\n  \
             cargo run -q -- {} > {file}",
            args.join(" ")
        );
    }
}
