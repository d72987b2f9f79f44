//! `generate DIR` (hidden): writes the man pages and the shell completions
//! that the Debian package installs.
//!
//! Why a subcommand of the binary rather than a build script: the pages are
//! made from the very `clap` parser the shipped binary runs (no second copy
//! of `args.rs` compiled into a build script, no extra build dependencies
//! in every `cargo build`), and they land in a directory the packaging
//! script names, where a build script could only write into cargo's opaque
//! `OUT_DIR`, which `cargo deb` cannot find. `deploy/debian/build-deb` runs
//! it between `cargo build` and `cargo deb --no-build`.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::CommandFactory;
use clap_complete::Shell;

use super::args::Cli;
use super::failure::{Failure, OrFail};

/// The name the pages and completions are written for: the installed
/// command, whatever the cargo target is called.
const BIN: &str = "token-sweeper";

/// What `man token-sweeper` adds to clap's sections: where the package puts
/// things, how settings layer, and what the exit codes mean (from `main.rs`).
const MAIN_PAGE_EXTRA: &str = r#".SH ENVIRONMENT
.TP
\fBTOKEN_SWEEPER__\fR\fISECTION\fR\fB__\fR\fIKEY\fR
Overrides the key \fIKEY\fR of section \fISECTION\fR of the configuration file, e.g.
\fBTOKEN_SWEEPER__REDIS__URL\fR or \fBTOKEN_SWEEPER__REDIS__PASSWORD\fR.
Secrets belong here (or in a *_file key), never on the command line.
.TP
\fBRUST_LOG\fR
Overrides \fBlog.level\fR.
.SH FILES
.TP
\fI/etc/token\-sweeper/config.toml\fR
The configuration: every key with its built\-in default and what it does.
.TP
\fI/etc/token\-sweeper/env\fR
Environment for the systemd unit (mode 0600, read by systemd as root before
the daemon starts): the place for \fBTOKEN_SWEEPER__REDIS__PASSWORD\fR.
Restart the unit after editing it; a reload rereads only the configuration file.
.TP
\fI/usr/lib/systemd/system/token\-sweeper.service\fR
The unit: \fBsystemctl enable \-\-now token\-sweeper\fR starts the daemon,
\fBsystemctl reload token\-sweeper\fR rereads the configuration.
.SH "EXIT STATUS"
0 on success, 1 on a runtime failure (Redis unreachable, a refused token),
2 on bad usage or configuration.
.SH "SEE ALSO"
\fBsystemctl\fR(1), \fBsystemd.exec\fR(5), \fI/usr/share/doc/token\-sweeper/README.md\fR
"#;

/// Writes `DIR/man/*.1` (the command and each visible subcommand) and
/// `DIR/completions/` for bash, zsh and fish.
pub fn generate(dir: &Path) -> Result<ExitCode, Failure> {
    let man_dir = dir.join("man");
    let completions_dir = dir.join("completions");
    std::fs::create_dir_all(&man_dir).or_runtime()?;
    std::fs::create_dir_all(&completions_dir).or_runtime()?;

    let mut cmd = Cli::command().bin_name(BIN).disable_help_subcommand(true);
    // Fills in the subcommands' display names ("token-sweeper-sweep") that
    // the pages' titles and file names use.
    cmd.build();
    write_pages(&cmd, &man_dir, true)?;
    for shell in [Shell::Bash, Shell::Zsh, Shell::Fish] {
        clap_complete::generate_to(shell, &mut cmd, BIN, &completions_dir).or_runtime()?;
    }
    println!("{}\n{}", man_dir.display(), completions_dir.display());
    Ok(ExitCode::SUCCESS)
}

/// One page per command, recursively; hidden commands (this one) get none.
fn write_pages(cmd: &clap::Command, dir: &Path, main: bool) -> Result<(), Failure> {
    for sub in cmd.get_subcommands().filter(|s| !s.is_hide_set()) {
        write_pages(sub, dir, false)?;
    }
    let man = clap_mangen::Man::new(cmd.clone());
    let path: PathBuf = dir.join(man.get_filename());
    let mut page = Vec::new();
    man.render(&mut page).or_runtime()?;
    if main {
        page.extend_from_slice(MAIN_PAGE_EXTRA.as_bytes());
    }
    let mut file = std::fs::File::create(&path).or_runtime()?;
    file.write_all(&page).or_runtime()?;
    Ok(())
}
