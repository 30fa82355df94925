//! [`FileStore`]: tokens in a JSON file, shared by the processes of one machine.
//!
//! # Durability
//!
//! Every save writes the whole file anew: a temporary file in the same directory (mode 0600),
//! written, `fsync`ed, renamed over the old file, and the directory `fsync`ed. A crash at any
//! point leaves either the old file or the new one, never a torn one. A save is a
//! read-modify-write of every key's tokens, so saves take a short OS lock on a sibling
//! `<file>.write-lock`.
//!
//! # One refresh across processes
//!
//! [`TokenStore::lock`] takes an OS advisory lock (`flock`) on a sibling `<file>.lock` and holds
//! it while one refresh runs: the layer re-reads the file under it and adopts tokens another
//! process saved instead of spending the refresh token again. The lock covers the whole file, so
//! refreshes of different keys in one file wait for each other; a service with many users is
//! better served by a database-backed store. The OS drops the lock when a process dies, so a
//! crashed holder never blocks the others.

use std::collections::BTreeMap;
use std::fs::{self, File, OpenOptions, TryLockError};
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use serde::{Deserialize, Serialize};

use super::{Held, Revision, StoreGuard, Stored, TokenStore};
use crate::error::StoreError;
use crate::key::TokenKey;
use crate::token::TokenSet;

/// How long [`TokenStore::lock`] waits for another process's refresh, unless set otherwise: 60
/// seconds.
pub const DEFAULT_FILE_LOCK_TIMEOUT: Duration = Duration::from_secs(60);

/// The format version written to the file: 2 keeps a revision beside each key's tokens.
const FORMAT_VERSION: u32 = 2;

/// The first format, with no revisions; read as revision 1 of every key, rewritten as version 2.
const FORMAT_VERSION_WITHOUT_REVISIONS: u32 = 1;

/// Keeps tokens in a JSON file: atomic writes, mode 0600, and an OS file lock so that processes
/// on one machine share one refresh.
///
/// ```no_run
/// # fn run() -> Result<(), reqwest_token_refresh::Error> {
/// use reqwest_token_refresh::{FileStore, RefreshTokenGrant, TokenRefresh};
///
/// let auth = TokenRefresh::builder(RefreshTokenGrant::new("https://provider.example/oauth/token"))
///     .allow_origin("https://api.provider.example")
///     .store(FileStore::new("/var/lib/my-service/tokens.json"))
///     .build()?;
/// # Ok(()) }
/// ```
///
/// A file that cannot be read as tokens (truncated by hand, say) gives [`StoreError::Corrupt`]
/// naming the path, and is never overwritten, unless [`overwrite_corrupt`](Self::overwrite_corrupt)
/// says so.
#[derive(Debug, Clone)]
pub struct FileStore {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    path: PathBuf,
    lock_timeout: Duration,
    overwrite_corrupt: bool,
    /// Serialises this process's saves before they queue on the OS lock, so that they do not
    /// tie up blocking threads.
    writing: tokio::sync::Mutex<()>,
}

/// The file's content.
#[derive(Debug, Default, Serialize)]
struct Contents {
    version: u32,
    keys: BTreeMap<String, Entry>,
}

/// One key's tokens and the revision of their save; `"tokens": null` once they were removed (a
/// tombstone: the revision stays, so that no set older than the removal is saved over it).
#[derive(Debug, Serialize, Deserialize)]
struct Entry {
    revision: u64,
    tokens: Option<TokenSet>,
}

/// The file as read, in either format.
#[derive(Deserialize)]
struct Raw {
    version: u32,
    keys: BTreeMap<String, serde_json::Value>,
}

impl FileStore {
    /// A store in the file at `path`. The file is created on the first save; its directory must
    /// exist.
    pub fn new(path: impl Into<PathBuf>) -> Self {
        Self {
            inner: Arc::new(Inner {
                path: path.into(),
                lock_timeout: DEFAULT_FILE_LOCK_TIMEOUT,
                overwrite_corrupt: false,
                writing: tokio::sync::Mutex::new(()),
            }),
        }
    }

    /// How long to wait for another process's refresh.
    ///
    /// Default: 60 seconds ([`DEFAULT_FILE_LOCK_TIMEOUT`]).
    #[must_use = "returns the changed store; on its own the call changes nothing"]
    pub fn lock_timeout(self, timeout: Duration) -> Self {
        self.map(|inner| inner.lock_timeout = timeout)
    }

    /// Lets a save replace a file that cannot be read as tokens (default: no, the save fails with
    /// [`StoreError::Corrupt`] and the file is left for a person to look at).
    #[must_use = "returns the changed store; on its own the call changes nothing"]
    pub fn overwrite_corrupt(self, overwrite: bool) -> Self {
        self.map(|inner| inner.overwrite_corrupt = overwrite)
    }

    /// The file's path.
    pub fn path(&self) -> &Path {
        &self.inner.path
    }

    fn map(self, change: impl FnOnce(&mut Inner)) -> Self {
        let mut inner = Inner {
            path: self.inner.path.clone(),
            lock_timeout: self.inner.lock_timeout,
            overwrite_corrupt: self.inner.overwrite_corrupt,
            writing: tokio::sync::Mutex::new(()),
        };
        change(&mut inner);
        Self { inner: Arc::new(inner) }
    }

    fn sibling(&self, suffix: &str) -> PathBuf {
        let mut name = self.inner.path.file_name().map(|n| n.to_os_string()).unwrap_or_default();
        name.push(suffix);
        self.inner.path.with_file_name(name)
    }

    fn directory(&self) -> PathBuf {
        match self.inner.path.parent() {
            Some(parent) if !parent.as_os_str().is_empty() => parent.to_path_buf(),
            _ => PathBuf::from("."),
        }
    }

    /// A missing directory is named as such, rather than as a failure to open some file in it.
    fn check_directory(&self) -> Result<(), StoreError> {
        let directory = self.directory();
        if directory.is_dir() {
            return Ok(());
        }
        Err(StoreError::io(
            format!("saving {}: the directory {} does not exist", self.inner.path.display(), directory.display()),
            io::Error::from(io::ErrorKind::NotFound),
        ))
    }

    /// Reads the whole file; `Ok(None)` when it does not exist yet.
    fn read(&self) -> Result<Option<Contents>, StoreError> {
        let path = &self.inner.path;
        let bytes = match fs::read(path) {
            Ok(bytes) => bytes,
            Err(err) if err.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(err) => return Err(StoreError::io(format!("reading {}", path.display()), err)),
        };
        let corrupt =
            |err: serde_json::Error| StoreError::Corrupt(format!("{} is not a token file: {err}", path.display()));
        let raw: Raw = serde_json::from_slice(&bytes).map_err(corrupt)?;
        let keys = match raw.version {
            FORMAT_VERSION => raw
                .keys
                .into_iter()
                .map(|(key, entry)| Ok((key, serde_json::from_value(entry)?)))
                .collect::<Result<_, serde_json::Error>>(),
            FORMAT_VERSION_WITHOUT_REVISIONS => raw
                .keys
                .into_iter()
                .map(|(key, tokens)| Ok((key, Entry { revision: 1, tokens: Some(serde_json::from_value(tokens)?) })))
                .collect::<Result<_, serde_json::Error>>(),
            other => {
                return Err(StoreError::Corrupt(format!(
                    "{} has format version {other}, this crate reads versions {FORMAT_VERSION_WITHOUT_REVISIONS} and {FORMAT_VERSION}",
                    path.display(),
                )));
            }
        }
        .map_err(corrupt)?;
        Ok(Some(Contents { version: FORMAT_VERSION, keys }))
    }

    /// Compare-and-set of one key (`tokens: None` removes them; see [`Held::write_over`]):
    /// read-modify-write under the write lock, then an atomic replace.
    fn write_key(&self, key: &TokenKey, tokens: Option<&TokenSet>, replaces: Revision) -> Result<Revision, StoreError> {
        self.check_directory()?;
        let lock_path = self.sibling(".write-lock");
        let lock = open_lock_file(&lock_path)?;
        lock.lock().map_err(|err| StoreError::io(format!("locking {}", lock_path.display()), err))?;
        let mut contents = match self.read() {
            Ok(contents) => contents.unwrap_or_default(),
            Err(StoreError::Corrupt(_)) if self.inner.overwrite_corrupt => Contents::default(),
            Err(err) => return Err(err),
        };
        let held = match contents.keys.get(key.as_str()) {
            None => Held::Nothing,
            Some(Entry { revision, tokens: Some(_) }) => Held::Tokens(Revision::new(*revision)),
            Some(Entry { revision, tokens: None }) => Held::Removed(Revision::new(*revision)),
        };
        let revision = held.write_over(replaces)?;
        contents.version = FORMAT_VERSION;
        contents.keys.insert(key.as_str().to_owned(), Entry { revision: revision.get(), tokens: tokens.cloned() });
        let bytes = serde_json::to_vec_pretty(&contents)
            .map_err(|err| StoreError::Corrupt(format!("tokens cannot be written as JSON: {err}")))?;
        self.replace(&bytes)?;
        Ok(revision)
        // The write lock is released when `lock` is dropped (closed) here.
    }

    /// Writes `bytes` to a temporary file, syncs it, renames it over the file, syncs the
    /// directory.
    fn replace(&self, bytes: &[u8]) -> Result<(), StoreError> {
        let path = &self.inner.path;
        let directory = self.directory();
        let temporary = self.sibling(&format!(".{}.tmp", std::process::id()));
        let written = (|| {
            let mut file = create_private(&temporary)?;
            file.write_all(bytes)?;
            file.sync_all()
        })();
        if let Err(err) = written {
            // A full disk lands here (ENOSPC on write or on sync); the old file is untouched.
            let _ = fs::remove_file(&temporary);
            return Err(StoreError::io(format!("writing {}", temporary.display()), err));
        }
        if let Err(err) = fs::rename(&temporary, path) {
            let _ = fs::remove_file(&temporary);
            return Err(StoreError::io(format!("renaming {} to {}", temporary.display(), path.display()), err));
        }
        // The rename is durable only once the directory entry is.
        File::open(&directory)
            .and_then(|dir| dir.sync_all())
            .map_err(|err| StoreError::io(format!("syncing the directory {}", directory.display()), err))
    }
}

#[async_trait]
impl TokenStore for FileStore {
    async fn load(&self, key: &TokenKey) -> Result<Option<Stored>, StoreError> {
        let store = self.clone();
        let key = key.clone();
        blocking(move || {
            let entry = store.read()?.and_then(|mut contents| contents.keys.remove(key.as_str()));
            Ok(entry.and_then(|entry| Some(Stored::new(entry.tokens?, Revision::new(entry.revision)))))
        })
        .await
    }

    async fn save(&self, key: &TokenKey, tokens: &TokenSet, replaces: Revision) -> Result<Revision, StoreError> {
        let _writing = self.inner.writing.lock().await;
        let store = self.clone();
        let (key, tokens) = (key.clone(), tokens.clone());
        blocking(move || store.write_key(&key, Some(&tokens), replaces)).await
    }

    async fn remove(&self, key: &TokenKey, replaces: Revision) -> Result<Revision, StoreError> {
        let _writing = self.inner.writing.lock().await;
        let store = self.clone();
        let key = key.clone();
        blocking(move || store.write_key(&key, None, replaces)).await
    }

    async fn lock(&self, key: &TokenKey) -> Result<Option<Box<dyn StoreGuard + '_>>, StoreError> {
        self.check_directory()?;
        let path = self.sibling(".lock");
        let file = {
            let path = path.clone();
            blocking(move || open_lock_file(&path)).await?
        };
        // Poll rather than block: a blocked thread cannot be given a deadline, and the wait is
        // normally one refresh long. A timeout too long to represent has no deadline of its own
        // (the layer's flight deadline still ends the wait).
        let deadline = Instant::now().checked_add(self.inner.lock_timeout);
        let mut pause = Duration::from_millis(1);
        loop {
            match file.try_lock() {
                Ok(()) => return Ok(Some(Box::new(FileGuard { store: self, key: key.clone(), _file: file }))),
                Err(TryLockError::WouldBlock) if deadline.is_none_or(|deadline| Instant::now() < deadline) => {
                    tokio::time::sleep(pause).await;
                    pause = next_lock_pause(pause);
                }
                Err(TryLockError::WouldBlock) => return Err(StoreError::LockTimeout),
                Err(TryLockError::Error(err)) => {
                    return Err(StoreError::io(format!("locking {}", path.display()), err));
                }
            }
        }
    }
}

/// A held refresh lock: the open lock file. Closing it releases the lock, also when the process
/// dies.
#[derive(Debug)]
struct FileGuard<'a> {
    store: &'a FileStore,
    key: TokenKey,
    _file: File,
}

#[async_trait]
impl StoreGuard for FileGuard<'_> {
    async fn load(&mut self) -> Result<Option<Stored>, StoreError> {
        self.store.load(&self.key).await
    }

    async fn save(&mut self, tokens: &TokenSet, replaces: Revision) -> Result<Revision, StoreError> {
        self.store.save(&self.key, tokens, replaces).await
    }

    async fn remove(&mut self, replaces: Revision) -> Result<Revision, StoreError> {
        self.store.remove(&self.key, replaces).await
    }

    async fn unlock(self: Box<Self>) -> Result<(), StoreError> {
        Ok(())
    }
}

/// How long to wait before trying a held lock again: doubling from 1 ms, at most 20 ms, so a lock
/// freed at once is taken at once and one held long costs a few wake-ups a second.
fn next_lock_pause(pause: Duration) -> Duration {
    (pause * 2).min(MAX_LOCK_PAUSE)
}

const MAX_LOCK_PAUSE: Duration = Duration::from_millis(20);

fn open_lock_file(path: &Path) -> Result<File, StoreError> {
    let mut options = OpenOptions::new();
    options.read(true).write(true).create(true).truncate(false);
    private(&mut options);
    options.open(path).map_err(|err| StoreError::io(format!("opening {}", path.display()), err))
}

fn create_private(path: &Path) -> io::Result<File> {
    let mut options = OpenOptions::new();
    options.write(true).create(true).truncate(true);
    private(&mut options);
    options.open(path)
}

#[cfg(unix)]
fn private(options: &mut OpenOptions) {
    use std::os::unix::fs::OpenOptionsExt;
    options.mode(0o600);
}

#[cfg(not(unix))]
fn private(_options: &mut OpenOptions) {}

async fn blocking<T: Send + 'static>(
    work: impl FnOnce() -> Result<T, StoreError> + Send + 'static,
) -> Result<T, StoreError> {
    tokio::task::spawn_blocking(work)
        .await
        .unwrap_or_else(|err| Err(StoreError::io("running file I/O", io::Error::other(err.to_string()))))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_held_lock_is_tried_again_after_a_doubling_pause_of_at_most_20_ms() {
        let pauses: Vec<u128> = std::iter::successors(Some(Duration::from_millis(1)), |p| Some(next_lock_pause(*p)))
            .take(7)
            .map(|p| p.as_millis())
            .collect();
        assert_eq!(pauses, [1, 2, 4, 8, 16, 20, 20]);
    }

    #[test]
    fn the_default_lock_timeout_is_what_its_docs_say() {
        assert_eq!(DEFAULT_FILE_LOCK_TIMEOUT, Duration::from_secs(60));
    }

    fn temp_dir(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("rtr-file-store-{name}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).unwrap();
        dir
    }

    #[tokio::test]
    async fn saves_and_loads_several_keys() {
        let dir = temp_dir("keys");
        let store = FileStore::new(dir.join("tokens.json"));
        let (a, b) = (TokenKey::new("a"), TokenKey::new("b"));
        assert!(store.load(&a).await.unwrap().is_none(), "no file yet");
        let first = store.save(&a, &TokenSet::new("ta").with_refresh_token("ra"), Revision::NONE).await.unwrap();
        store.save(&b, &TokenSet::new("tb"), Revision::NONE).await.unwrap();
        let second = store.save(&a, &TokenSet::new("ta2").with_refresh_token("ra2"), first).await.unwrap();
        assert_eq!((first, second), (Revision::new(1), Revision::new(2)));
        let late = store.save(&a, &TokenSet::new("late"), first).await.unwrap_err();
        assert!(matches!(late, StoreError::Superseded), "{late:?}");
        let reopened = FileStore::new(dir.join("tokens.json"));
        let stored = reopened.load(&a).await.unwrap().unwrap();
        assert_eq!((stored.tokens.access_token().secret(), stored.revision), ("ta2", second));
        assert_eq!(reopened.load(&b).await.unwrap().unwrap().tokens.access_token().secret(), "tb");
        assert!(!dir.join("tokens.json.0.tmp").exists());
    }

    #[tokio::test]
    async fn a_removed_key_reads_as_no_tokens_from_the_file_and_keeps_its_revision() {
        let dir = temp_dir("remove");
        let path = dir.join("tokens.json");
        let store = FileStore::new(&path);
        let (a, b) = (TokenKey::new("a"), TokenKey::new("b"));
        let first = store.save(&a, &TokenSet::new("ta").with_refresh_token("ra-secret"), Revision::NONE).await.unwrap();
        store.save(&b, &TokenSet::new("tb"), Revision::NONE).await.unwrap();
        let mut guard = store.lock(&a).await.unwrap().unwrap();
        assert!(matches!(guard.remove(Revision::NONE).await, Err(StoreError::Superseded)));
        let removed = guard.remove(first).await.unwrap();
        guard.unlock().await.unwrap();

        // Another process opening the file sees no tokens for the key, and cannot save its copy back.
        let other = FileStore::new(&path);
        assert!(other.load(&a).await.unwrap().is_none());
        assert_eq!(other.load(&b).await.unwrap().unwrap().tokens.access_token().secret(), "tb", "other keys stay");
        let refused = other.save(&a, &TokenSet::new("ta"), first).await.unwrap_err();
        assert!(matches!(refused, StoreError::Removed { revision } if revision == removed), "{refused:?}");
        let text = fs::read_to_string(&path).unwrap();
        assert!(!text.contains("ra-secret"), "the revoked refresh token is gone from the file: {text}");
        assert_eq!(other.save(&a, &TokenSet::new("ta2"), removed).await.unwrap(), Revision::new(3));
    }

    #[cfg(unix)]
    #[tokio::test]
    async fn the_file_is_private_to_its_owner() {
        use std::os::unix::fs::PermissionsExt;
        let dir = temp_dir("mode");
        let store = FileStore::new(dir.join("tokens.json"));
        store.save(&TokenKey::default(), &TokenSet::new("t"), Revision::NONE).await.unwrap();
        let mode = fs::metadata(dir.join("tokens.json")).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
    }

    #[tokio::test]
    async fn a_missing_directory_is_a_clear_io_error() {
        let store = FileStore::new("/nonexistent-rtr-dir/sub/tokens.json");
        let err = store.save(&TokenKey::default(), &TokenSet::new("t"), Revision::NONE).await.unwrap_err();
        assert!(matches!(err, StoreError::Io { .. }), "{err:?}");
        assert!(err.to_string().contains("does not exist"), "{err}");
    }

    #[tokio::test]
    async fn a_corrupt_file_is_reported_with_its_path_and_never_overwritten() {
        let dir = temp_dir("corrupt");
        let path = dir.join("tokens.json");
        fs::write(&path, b"{\"version\":2,\"keys\":{\"default\":{\"access_tok").unwrap();
        let store = FileStore::new(&path);
        let err = store.load(&TokenKey::default()).await.unwrap_err();
        assert!(matches!(&err, StoreError::Corrupt(msg) if msg.contains("tokens.json")), "{err:?}");
        let err = store.save(&TokenKey::default(), &TokenSet::new("t"), Revision::NONE).await.unwrap_err();
        assert!(matches!(err, StoreError::Corrupt(_)));
        assert!(fs::read(&path).unwrap().ends_with(b"access_tok"), "the corrupt file was left alone");

        let overwriting = FileStore::new(&path).overwrite_corrupt(true);
        overwriting.save(&TokenKey::default(), &TokenSet::new("t"), Revision::NONE).await.unwrap();
        assert!(overwriting.load(&TokenKey::default()).await.unwrap().is_some());
    }

    #[tokio::test]
    async fn the_refresh_lock_excludes_a_second_holder_and_times_out() {
        let dir = temp_dir("lock");
        let store = FileStore::new(dir.join("tokens.json")).lock_timeout(Duration::from_millis(100));
        let other = FileStore::new(dir.join("tokens.json")).lock_timeout(Duration::from_millis(100));
        let held = store.lock(&TokenKey::default()).await.unwrap().unwrap();
        // Bounded here too, so that a lock that never times out fails this test instead of hanging it.
        let waited = tokio::time::timeout(Duration::from_secs(10), other.lock(&TokenKey::default())).await;
        let err = waited.expect("the lock timeout ends the wait").unwrap_err();
        assert!(matches!(err, StoreError::LockTimeout), "{err:?}");
        held.unlock().await.unwrap();
        assert!(other.lock(&TokenKey::default()).await.unwrap().is_some());
    }

    #[tokio::test]
    async fn a_waiter_gets_the_lock_when_the_holder_lets_go_within_its_timeout() {
        let dir = temp_dir("lock-wait");
        let store = FileStore::new(dir.join("tokens.json"));
        let patient = FileStore::new(dir.join("tokens.json")).lock_timeout(Duration::from_secs(10));
        let held = store.lock(&TokenKey::default()).await.unwrap().unwrap();
        let waiter = tokio::spawn(async move { patient.lock(&TokenKey::default()).await.map(|lock| lock.is_some()) });
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert!(!waiter.is_finished(), "the second holder waits");
        held.unlock().await.unwrap();
        let got = tokio::time::timeout(Duration::from_secs(10), waiter).await.expect("bounded");
        assert!(got.unwrap().unwrap(), "the waiter got the lock once it was free");
    }

    #[test]
    fn a_bare_file_name_lives_in_the_current_directory() {
        assert_eq!(FileStore::new("tokens.json").directory(), PathBuf::from("."));
        assert_eq!(FileStore::new("/var/lib/app/tokens.json").directory(), PathBuf::from("/var/lib/app"));
    }

    #[tokio::test]
    async fn a_file_that_cannot_be_read_is_an_error_not_an_empty_store() {
        // A directory where the file should be: reading it fails, and that is not "no tokens yet".
        let dir = temp_dir("unreadable");
        let path = dir.join("tokens.json");
        fs::create_dir_all(&path).unwrap();
        let err = FileStore::new(&path).load(&TokenKey::default()).await.unwrap_err();
        assert!(matches!(&err, StoreError::Io { .. }), "{err:?}");
        assert!(err.to_string().contains("reading"), "{err}");
    }

    #[tokio::test]
    async fn a_file_in_the_first_format_reads_as_revision_1_and_is_rewritten_in_the_second() {
        let dir = temp_dir("v1");
        let path = dir.join("tokens.json");
        fs::write(&path, br#"{"version":1,"keys":{"default":{"access_token":"a1","refresh_token":"r1"}}}"#).unwrap();
        let store = FileStore::new(&path);
        let stored = store.load(&TokenKey::default()).await.unwrap().unwrap();
        assert_eq!((stored.tokens.access_token().secret(), stored.revision), ("a1", Revision::new(1)));
        store.save(&TokenKey::default(), &TokenSet::new("a2"), stored.revision).await.unwrap();
        let written: serde_json::Value = serde_json::from_slice(&fs::read(&path).unwrap()).unwrap();
        assert_eq!(written["version"], 2);
        assert_eq!(written["keys"]["default"]["revision"], 2);
    }

    #[tokio::test]
    async fn a_lock_timeout_too_long_to_represent_waits_without_panicking() {
        let dir = temp_dir("max");
        let store = FileStore::new(dir.join("tokens.json")).lock_timeout(Duration::MAX);
        let held = store.lock(&TokenKey::default()).await.unwrap().unwrap();
        let other = store.clone();
        let waiting = tokio::spawn(async move { other.lock(&TokenKey::default()).await.map(|guard| guard.is_some()) });
        tokio::time::sleep(Duration::from_millis(30)).await;
        assert!(!waiting.is_finished(), "the second holder waits");
        held.unlock().await.unwrap();
        assert!(tokio::time::timeout(Duration::from_secs(5), waiting).await.unwrap().unwrap().unwrap());
    }
}
