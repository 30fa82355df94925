//! `FileStore` under faults a real disk has: no space left, a read-only file system, a corrupt
//! file. Typed errors that name what happened, the in-memory token keeps working, the save is
//! retried, nothing is overwritten that could not be read.
//!
//! The disk faults use a small tmpfs that the test mounts, which needs root (as on CI); without
//! it the test fails and says so.

use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use reqwest_token_refresh::testkit::MockProvider;
use reqwest_token_refresh::{Error, FileStore, StoreError, TokenKey};

use crate::helpers::StoreExt;
use crate::helpers::{client_with, count, eventually, layer, storm};

/// A 64 KiB tmpfs mounted for one test, unmounted on drop.
struct TinyDisk {
    root: PathBuf,
}

impl TinyDisk {
    fn mount(name: &str) -> Self {
        let root = std::env::temp_dir().join(format!("rtr-tinydisk-{name}-{}", std::process::id()));
        std::fs::create_dir_all(&root).unwrap();
        let mounted = Command::new("mount").args(["-t", "tmpfs", "-o", "size=64k", "tmpfs"]).arg(&root).status();
        assert!(
            mounted.is_ok_and(|status| status.success()),
            "mounting a 64 KiB tmpfs at {} failed: the disk-fault tests need root (CI runs as root)",
            root.display()
        );
        TinyDisk { root }
    }

    fn path(&self, name: &str) -> PathBuf {
        self.root.join(name)
    }

    /// Fills the file system to the last byte.
    fn fill(&self) -> PathBuf {
        let filler = self.path("filler");
        let _ = Command::new("dd")
            .arg("if=/dev/zero")
            .arg(format!("of={}", filler.display()))
            .arg("bs=4k")
            .stderr(std::process::Stdio::null())
            .status();
        filler
    }

    fn remount(&self, mode: &str) {
        let status = Command::new("mount").args(["-o", &format!("remount,{mode}")]).arg(&self.root).status().unwrap();
        assert!(status.success());
    }
}

impl Drop for TinyDisk {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(&self.root).status();
        let _ = std::fs::remove_dir(&self.root);
    }
}

fn is_io_error(err: &StoreError, needle: &str) -> bool {
    matches!(err, StoreError::Io { source, .. } if source.to_string().contains(needle))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_disk_keeps_the_new_tokens_in_use_and_saves_them_once_space_is_back() {
    let disk = TinyDisk::mount("full");
    let provider = MockProvider::start().await;
    let path = disk.path("tokens.json");
    let store = FileStore::new(&path);
    store.put(&TokenKey::default(), &provider.issue_tokens()).await.unwrap();
    let (errors, seen) = crate::helpers::counter();
    let auth = layer(&provider, provider.issue_tokens())
        .store(store.clone())
        .min_backoff(Duration::from_millis(20))
        .on_store_error(move |_, err| {
            assert!(is_io_error(err, "No space left on device"), "{err:?}");
            errors.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        })
        .build()
        .unwrap();
    let client = client_with(&auth);
    let url = provider.api_url("me");
    assert_eq!(client.get(&url).send().await.unwrap().status(), 200);

    let filler = disk.fill();
    provider.expire_access_tokens();
    let statuses = storm(&client, &url, 50, None).await;

    assert_eq!(count(&statuses, 200), 50, "the new tokens are used although the disk is full");
    assert!(seen() >= 1 && auth.stats().store_failures >= 1);
    let before = store.get(&TokenKey::default()).await.unwrap().unwrap();
    assert_ne!(before.refresh_token(), auth.tokens().unwrap().refresh_token(), "not saved yet");
    assert!(!disk.path("tokens.json.0.tmp").exists());

    std::fs::remove_file(filler).unwrap();
    let in_use = auth.tokens().unwrap();
    eventually("the retried save reached the disk", || {
        let saved = futures::executor::block_on(store.get(&TokenKey::default())).ok().flatten();
        saved.is_some_and(|saved| saved.refresh_token() == in_use.refresh_token())
    })
    .await;
    assert_eq!(provider.stats().token_calls, 1);
}

#[tokio::test]
async fn a_read_only_file_system_is_a_typed_error_and_the_old_file_survives() {
    let disk = TinyDisk::mount("readonly");
    let path = disk.path("tokens.json");
    let store = FileStore::new(&path);
    let provider = MockProvider::start().await;
    let original = provider.issue_tokens();
    store.put(&TokenKey::default(), &original).await.unwrap();
    disk.remount("ro");

    let err = store.put(&TokenKey::default(), &provider.issue_tokens()).await.unwrap_err();

    assert!(is_io_error(&err, "Read-only file system"), "{err:?}");
    assert!(err.to_string().contains("tokens.json"), "the error names the file: {err}");
    let kept = store.get(&TokenKey::default()).await.unwrap().unwrap();
    assert_eq!((kept.access_token(), kept.refresh_token()), (original.access_token(), original.refresh_token()));
    disk.remount("rw");
}

#[tokio::test]
async fn a_corrupt_token_file_fails_requests_with_an_error_naming_it_and_is_left_alone() {
    let dir = std::env::temp_dir().join(format!("rtr-corrupt-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("tokens.json");
    std::fs::write(&path, b"{\"version\":1,\"keys\":{\"default\":{\"access_token\":\"a").unwrap();
    let provider = MockProvider::start().await;
    let auth = layer(&provider, provider.issue_tokens()).store(FileStore::new(&path)).build().unwrap();

    let err = client_with(&auth).get(provider.api_url("me")).send().await.unwrap_err();

    match Error::from_middleware(&err) {
        Some(Error::Store { source: StoreError::Corrupt(what), .. }) => assert!(what.contains("tokens.json"), "{what}"),
        other => panic!("expected a corrupt-store error, got {other:?}"),
    }
    assert!(std::fs::read(&path).unwrap().ends_with(b"\"a"), "the unreadable file was not overwritten");
    assert_eq!(provider.stats().api_calls, 0, "no request went out without a token");
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test]
async fn a_layer_holding_a_rotated_away_token_adopts_the_one_another_saved_instead_of_dying() {
    let dir = std::env::temp_dir().join(format!("rtr-adopt-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("tokens.json");
    let provider = MockProvider::start().await;
    FileStore::new(&path).put(&TokenKey::default(), &provider.issue_tokens()).await.unwrap();
    // Two layers (as in two processes), each with its own handle on the file.
    let first = layer(&provider, provider.issue_tokens()).store(FileStore::new(&path)).build().unwrap();
    let second = layer(&provider, provider.issue_tokens()).store(FileStore::new(&path)).build().unwrap();
    let url = provider.api_url("me");
    for auth in [&first, &second] {
        assert_eq!(client_with(auth).get(&url).send().await.unwrap().status(), 200, "both loaded the same set");
    }
    provider.expire_access_tokens();

    assert_eq!(client_with(&first).get(&url).send().await.unwrap().status(), 200, "the first rotates");
    assert_eq!(client_with(&second).get(&url).send().await.unwrap().status(), 200, "the second adopts");

    assert_eq!(provider.stats().token_calls, 1);
    assert_eq!(provider.stats().reuse_detected, 0, "the rotated-away refresh token was never sent again");
    assert_eq!(second.stats().adopted, 1);
    assert!(!second.state().is_reauthorization_required());
    let _ = std::fs::remove_dir_all(&dir);
}
