//! `token-sweeper generate DIR`, the hidden subcommand the Debian package's
//! build runs for its man pages and completions (`deploy/debian/build-deb`;
//! `.ci/check-deb` installs and exercises the result).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::Path;
use std::process::{Command, Output};

fn sweeper(args: &[&str], env: &[(&str, &str)]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_token-sweeper"))
        .env_clear()
        .envs(env.iter().copied())
        .args(args)
        .output()
        .unwrap()
}

/// The subcommands `--help` lists, as an operator sees them.
fn visible_subcommands() -> Vec<String> {
    let out = sweeper(&["--help"], &[]);
    assert!(out.status.success());
    let help = String::from_utf8(out.stdout).unwrap();
    let commands = help.split("Commands:").nth(1).unwrap();
    let commands = commands.split("Options:").next().unwrap();
    commands
        .lines()
        .filter_map(|line| line.split_whitespace().next())
        .filter(|name| *name != "help")
        .map(str::to_owned)
        .collect()
}

#[test]
fn generate_writes_a_page_per_subcommand_and_three_completions() {
    let dir = tempfile::tempdir().unwrap();
    let out_dir = dir.path().join("assets");
    // A setting that does not load: generating must not need the settings,
    // since the package build has none at hand.
    let out = sweeper(
        &["generate", out_dir.to_str().unwrap()],
        &[("TOKEN_SWEEPER__REDIS__URL", "not a url")],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    let subcommands = visible_subcommands();
    assert!(
        subcommands.contains(&"check-config".to_owned()),
        "{subcommands:?}"
    );
    assert!(
        !subcommands.contains(&"generate".to_owned()),
        "generate is meant to be hidden"
    );
    let main_page = std::fs::read_to_string(out_dir.join("man/token-sweeper.1")).unwrap();
    for name in &subcommands {
        let page = out_dir.join(format!("man/token-sweeper-{name}.1"));
        assert!(page.is_file(), "no page {}", page.display());
        // roff escapes the hyphens of the cross-reference.
        let reference = format!("token\\-sweeper\\-{}", name.replace('-', "\\-"));
        assert!(
            main_page.contains(&reference),
            "the main page does not list {name}"
        );
    }
    assert!(!out_dir.join("man/token-sweeper-generate.1").exists());
    // The sections the package's layout adds to clap's.
    for section in [".SH FILES", ".SH ENVIRONMENT", ".SH \"EXIT STATUS\""] {
        assert!(main_page.contains(section), "the main page lacks {section}");
    }

    for file in ["token-sweeper.bash", "_token-sweeper", "token-sweeper.fish"] {
        let text = std::fs::read_to_string(out_dir.join("completions").join(file)).unwrap();
        for name in &subcommands {
            assert!(
                text.contains(name.as_str()),
                "{file} does not complete {name}"
            );
        }
    }
}

#[test]
fn generate_into_an_unusable_directory_fails_with_exit_1() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("a-file");
    std::fs::write(&file, "").unwrap();
    let out = sweeper(&["generate", file.to_str().unwrap()], &[]);
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.starts_with("token-sweeper: "), "{stderr}");
    assert!(!Path::new(&file).join("man").exists());
}
