//! The blob store on a real directory and on object_store's in-memory store (the code path
//! of S3/GCS): round trips, deletes, and refusal of every URI outside the store.

use std::collections::BTreeMap;

use vidx_blob::ObjectBlobStore;
use vidx_core::BlobError;
use vidx_core::ports::BlobStore;

type TestResult = Result<(), Box<dyn std::error::Error>>;

fn refused<T: std::fmt::Debug>(result: Result<T, BlobError>, what: &str) {
    match result {
        Err(BlobError::Refused { .. }) => {}
        other => panic!("{what}: expected a refusal, got {other:?}"),
    }
}

#[tokio::test]
async fn a_local_store_round_trips_and_reads_in_place() -> TestResult {
    let directory = tempfile::tempdir()?;
    let root = directory.path().join("blobs");
    let store = ObjectBlobStore::open(&root.display().to_string(), &BTreeMap::new())?;
    let canonical = std::fs::canonicalize(&root)?;
    assert_eq!(store.location(), format!("file://{}", canonical.display()));

    let uri = store
        .put("job-1/000003.mkv", b"segment bytes".to_vec())
        .await?;
    assert_eq!(uri, format!("{}/job-1/000003.mkv", store.location()));
    assert_eq!(store.get(&uri).await?, b"segment bytes");
    let path = store
        .local_path(&uri)?
        .ok_or("a local store reads in place")?;
    assert_eq!(path, canonical.join("job-1/000003.mkv"));
    assert_eq!(std::fs::read(&path)?, b"segment bytes");

    store.delete(&uri).await?;
    assert!(!path.exists());
    store.delete(&uri).await?; // already gone: fine
    assert!(matches!(store.get(&uri).await, Err(BlobError::NotFound(_))));
    Ok(())
}

#[tokio::test]
async fn a_local_store_refuses_uris_outside_its_directory() -> TestResult {
    let directory = tempfile::tempdir()?;
    let root = directory.path().join("blobs");
    let outside = directory.path().join("secret.txt");
    std::fs::write(&outside, b"do not read")?;
    let store = ObjectBlobStore::open(&format!("file://{}", root.display()), &BTreeMap::new())?;
    std::os::unix::fs::symlink(&outside, root.join("link.mkv"))?;

    let location = store.location().to_string();
    for uri in [
        format!("file://{}", outside.display()),
        "file:///etc/passwd".to_string(),
        format!("{location}/../secret.txt"),
        format!("{location}/link.mkv"),
        "s3://bucket/job/000001.mkv".to_string(),
        "relative/path.mkv".to_string(),
    ] {
        refused(store.get(&uri).await, &uri);
        refused(store.local_path(&uri), &uri);
        refused(store.delete(&uri).await, &uri);
    }
    assert!(outside.exists(), "nothing outside the store is deleted");
    for key in ["../x", "/abs", "a//b", "a/./b", ""] {
        refused(store.put(key, b"x".to_vec()).await, key);
    }
    Ok(())
}

#[tokio::test]
async fn an_object_store_keeps_keys_under_its_prefix() -> TestResult {
    let store = ObjectBlobStore::open("memory:///vidx/blobs/", &BTreeMap::new())?;
    assert_eq!(store.location(), "memory:///vidx/blobs");
    let uri = store.put("job-2/000001.mkv", vec![7; 4096]).await?;
    assert_eq!(uri, "memory:///vidx/blobs/job-2/000001.mkv");
    assert_eq!(store.get(&uri).await?, vec![7; 4096]);
    assert_eq!(
        store.local_path(&uri)?,
        None,
        "remote stores are read into memory"
    );
    for uri in [
        "memory:///vidx/other/job-2/000001.mkv",
        "memory:///vidx/blobs/../blobs/job-2/000001.mkv",
        "memory:///vidx/blobsX/job-2/000001.mkv",
        "memory:///vidx/blobs",
    ] {
        refused(store.get(uri).await, uri);
        refused(store.delete(uri).await, uri);
    }
    store.delete(&uri).await?;
    assert!(matches!(store.get(&uri).await, Err(BlobError::NotFound(_))));
    Ok(())
}

#[test]
fn s3_and_gcs_open_from_options_without_leaking_secrets() -> TestResult {
    let options = BTreeMap::from([
        ("aws_region".to_string(), "eu-west-1".to_string()),
        (
            "aws_access_key_id".to_string(),
            "AKIAEXAMPLEEXAMPLE".to_string(),
        ),
        (
            "aws_secret_access_key".to_string(),
            "very-secret-value".to_string(),
        ),
        (
            "aws_endpoint".to_string(),
            "http://127.0.0.1:9000".to_string(),
        ),
        ("aws_allow_http".to_string(), "true".to_string()),
    ]);
    let store = ObjectBlobStore::open("s3://vidx-segments/cluster-a", &options)?;
    assert_eq!(store.location(), "s3://vidx-segments/cluster-a");
    assert_eq!(
        store.local_path("s3://vidx-segments/cluster-a/job/000001.mkv")?,
        None
    );
    refused(
        store.local_path("s3://other-bucket/cluster-a/job/000001.mkv"),
        "another bucket",
    );
    assert!(!format!("{store:?}").contains("very-secret-value"));
    let gcs = ObjectBlobStore::open("gs://vidx-segments/cluster-b", &BTreeMap::new())?;
    assert_eq!(
        gcs.local_path("gs://vidx-segments/cluster-b/job/000001.mkv")?,
        None
    );

    for (location, expected) in [
        ("ftp://host/dir", "scheme `ftp` is not supported"),
        ("http://host/dir", "scheme `http` is not supported"),
        ("relative/dir", "must be an absolute path"),
        ("", "empty"),
    ] {
        match ObjectBlobStore::open(location, &BTreeMap::new()) {
            Err(BlobError::Config(message)) => {
                assert!(message.contains(expected), "{location}: {message}")
            }
            other => panic!("{location}: expected a configuration error, got {other:?}"),
        }
    }
    Ok(())
}

#[tokio::test]
async fn put_file_moves_a_chunk_into_a_local_store_and_uploads_it_to_a_remote_one() -> TestResult {
    let directory = tempfile::tempdir()?;
    let spool = directory.path().join("spool");
    std::fs::create_dir_all(&spool)?;

    let local = ObjectBlobStore::open(
        &directory.path().join("blobs").display().to_string(),
        &BTreeMap::new(),
    )?;
    let chunk = spool.join("000001.mkv");
    std::fs::write(&chunk, b"chunk one")?;
    let uri = local.put_file("job-1/000001.mkv", &chunk).await?;
    assert_eq!(uri, format!("{}/job-1/000001.mkv", local.location()));
    assert!(!chunk.exists(), "the chunk is moved, not copied");
    let path = local
        .local_path(&uri)?
        .ok_or("a local store reads in place")?;
    assert_eq!(std::fs::read(&path)?, b"chunk one");
    refused(
        local.put_file("../escape.mkv", &path).await,
        "a key with `..`",
    );

    let remote = ObjectBlobStore::open("memory:///blobs", &BTreeMap::new())?;
    let chunk = spool.join("000002.mkv");
    std::fs::write(&chunk, b"chunk two")?;
    let uri = remote.put_file("job-1/000002.mkv", &chunk).await?;
    assert!(!chunk.exists(), "the uploaded chunk is removed");
    assert_eq!(remote.get(&uri).await?, b"chunk two");
    Ok(())
}

#[tokio::test]
async fn listing_names_every_blob_under_a_prefix_and_nothing_else() -> TestResult {
    let directory = tempfile::tempdir()?;
    let local = ObjectBlobStore::open(
        &directory.path().join("blobs").display().to_string(),
        &BTreeMap::new(),
    )?;
    let remote = ObjectBlobStore::open("memory:///vidx/blobs/", &BTreeMap::new())?;
    for store in [&local, &remote] {
        assert!(
            store.list("footage/").await?.is_empty(),
            "{}: nothing yet",
            store.location()
        );
        let first = store.put("footage/a/1-2.mkv", vec![1; 10]).await?;
        let second = store.put("footage/a/3-4.mkv", vec![2; 20]).await?;
        store.put("footage/b/1-2.mkv", vec![3; 5]).await?;
        store.put("job/000001.mkv", vec![4; 5]).await?;
        let mut listed = store.list("footage/a/").await?;
        listed.sort_by(|a, b| a.key.cmp(&b.key));
        let keys: Vec<_> = listed.iter().map(|entry| entry.key.as_str()).collect();
        assert_eq!(keys, ["footage/a/1-2.mkv", "footage/a/3-4.mkv"]);
        assert_eq!(listed[0].uri, first);
        assert_eq!(listed[1].uri, second);
        assert_eq!((listed[0].bytes, listed[1].bytes), (10, 20));
        assert!(
            listed
                .iter()
                .all(|entry| entry.modified_ms > 1_700_000_000_000)
        );
        assert_eq!(store.list("footage/").await?.len(), 3);
        store.delete(&first).await?;
        assert_eq!(store.list("footage/a/").await?.len(), 1);
        refused(store.list("../").await, "a prefix outside the store");
    }
    Ok(())
}
