//! The documentation as a user meets it (issue 25): every INI block of README.md and docs/*.md is a
//! configuration `postgres-agent check --config-only` accepts as written, and the Debian package
//! ships every document README.md links, at the path the link names.
//!
//! `*_file` keys name secret files on the reader's host (`/etc/bitville/api-key`); `--config-only`
//! reads them, so the test points each at a file it writes with a sample secret, and changes
//! nothing else in the block.

use crate::support;

use std::path::{Path, PathBuf};

use support::agent;

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// README.md and every docs/*.md.
fn documents() -> Vec<PathBuf> {
    let mut docs: Vec<PathBuf> = std::fs::read_dir(repo().join("docs"))
        .unwrap()
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|e| e == "md"))
        .collect();
    docs.sort();
    docs.insert(0, repo().join("README.md"));
    docs
}

/// The fenced blocks tagged `tag` in `text`, with the line each starts on.
fn blocks(text: &str, tag: &str) -> Vec<(usize, String)> {
    let mut out = Vec::new();
    let mut current: Option<(usize, String)> = None;
    for (i, line) in text.lines().enumerate() {
        match &mut current {
            None if line.trim_start() == format!("```{tag}") => {
                current = Some((i + 1, String::new()))
            }
            Some(_) if line.trim_start().starts_with("```") => out.extend(current.take()),
            Some((_, body)) => {
                body.push_str(line);
                body.push('\n');
            }
            None => {}
        }
    }
    out
}

/// `block` with every `*_file = PATH` pointed at a sample file in `dir`.
fn with_secret_files(block: &str, dir: &Path) -> String {
    block
        .lines()
        .map(|line| {
            let Some((key, value)) = line.split_once('=') else {
                return line.to_string();
            };
            let key = key.trim();
            if !key.ends_with("_file") || key.starts_with(';') || key.starts_with('#') {
                return line.to_string();
            }
            let value = value.trim();
            // A value with a space (an inline comment, which INI does not have) is left for the
            // check to refuse.
            if value.contains(char::is_whitespace) {
                return line.to_string();
            }
            let name = Path::new(value).file_name().unwrap_or_default();
            let file = dir.join(name);
            std::fs::write(&file, "sample-secret\n").unwrap();
            format!("{key} = {}", file.display())
        })
        .collect::<Vec<_>>()
        .join("\n")
}

#[test]
fn every_ini_block_of_the_docs_passes_check_config_only() {
    let dir = tempfile::tempdir().unwrap();
    let mut checked = 0;
    let mut failures = Vec::new();
    for doc in documents() {
        let text = std::fs::read_to_string(&doc).unwrap();
        for (line, block) in blocks(&text, "ini") {
            let ini = dir.path().join(format!("block-{checked}.ini"));
            std::fs::write(&ini, with_secret_files(&block, dir.path())).unwrap();
            let out = agent(&["check", "--config-only", ini.to_str().unwrap()], &[]);
            if !out.status.success() {
                failures.push(format!(
                    "{}:{line}: {}{}",
                    doc.strip_prefix(repo()).unwrap_or(&doc).display(),
                    String::from_utf8_lossy(&out.stdout),
                    String::from_utf8_lossy(&out.stderr)
                ));
            }
            checked += 1;
        }
    }
    assert!(checked >= 3, "only {checked} INI blocks found");
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

/// The `assets` of `[package.metadata.deb]`: (source glob, destination).
fn deb_assets() -> Vec<(String, String)> {
    let toml = std::fs::read_to_string(repo().join("Cargo.toml")).unwrap();
    let start = toml.find("assets = [").expect("deb assets");
    let end = start + toml[start..].find("\n]").expect("end of assets");
    toml[start..end]
        .lines()
        .filter_map(|l| {
            let l = l.trim();
            let l = l.strip_prefix("[\"")?;
            let mut parts = l.split("\", \"");
            Some((parts.next()?.to_string(), parts.next()?.to_string()))
        })
        .collect()
}

/// Where the package installs `source` (a repository path), if an asset covers it.
fn installed_as(source: &str, assets: &[(String, String)]) -> Option<String> {
    assets.iter().find_map(|(from, to)| {
        if from == source {
            return Some(to.clone());
        }
        let (dir, pattern) = from.rsplit_once('/')?;
        let ext = pattern.strip_prefix('*')?;
        let (sdir, name) = source.rsplit_once('/')?;
        (sdir == dir && name.ends_with(ext) && to.ends_with('/')).then(|| format!("{to}{name}"))
    })
}

#[test]
fn the_debian_package_ships_every_doc_the_readme_links() {
    let readme = std::fs::read_to_string(repo().join("README.md")).unwrap();
    let assets = deb_assets();
    let base = installed_as("README.md", &assets).expect("README.md is shipped");
    let base = base.trim_end_matches("README.md");
    let mut links: Vec<&str> = readme
        .split("](")
        .skip(1)
        .filter_map(|rest| rest.split([')', '#']).next())
        .filter(|l| !l.is_empty() && !l.contains("://"))
        .collect();
    links.sort();
    links.dedup();
    assert!(!links.is_empty());
    for link in links {
        assert!(
            repo().join(link).exists(),
            "README.md links {link}, which does not exist"
        );
        let to = installed_as(link, &assets)
            .unwrap_or_else(|| panic!("README.md links {link}, which the package does not ship"));
        assert_eq!(
            to,
            format!("{base}{link}"),
            "{link} is installed where README.md's link does not point"
        );
    }
    // The postinst puts the user in the groups the Quick Start gives it.
    let postinst = std::fs::read_to_string(repo().join("debian/postinst")).unwrap();
    assert!(postinst.contains("for group in postgres adm"), "{postinst}");
    assert!(readme.contains("--groups postgres,adm postgres-agent"));
}
