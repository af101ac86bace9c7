//! The query node over a real gRPC connection on a loopback port, against the real Qdrant
//! Edge store: health and reflection, and docs/reliability.md's bad requests 14-16 and 18.

mod common;

use std::collections::HashSet;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, ensure};
use common::{Node, WordsEmbedder, authorized, config, engine, open_store, point};
use tonic::Code;
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;
use vidx_config::TokenConfig;
use vidx_core::ports::{IndexStore, TextEmbedder};
use vidx_proto::v1;
use vidx_proto::v1::search_service_client::SearchServiceClient;
use vidx_server::{Roles, service_names};
use vidx_testkit::NoFrames;

const TOKEN_A: &str = "tenant-a-token-0123456789";
const TOKEN_B: &str = "tenant-b-token-0123456789";
const TOKEN_OLD: &str = "expired-token-0123456789";

fn search(query: &str) -> v1::SearchRequest {
    v1::SearchRequest {
        query: query.into(),
        top_k: 10,
        ..Default::default()
    }
}

struct Fixture {
    node: Node,
    ids_a: HashSet<String>,
    ids_b: HashSet<String>,
    _dir: tempfile::TempDir,
}

/// A query node with tokens for tenants a and b (and an expired one), over a store holding
/// points of both tenants. The models "load" only when `loaded` fires.
async fn query_node(
    max_concurrent_requests: usize,
    delay: Duration,
    loaded: tokio::sync::oneshot::Receiver<()>,
) -> Result<Fixture> {
    let dir = tempfile::tempdir()?;
    let embedder = Arc::new(WordsEmbedder {
        delay: Duration::ZERO,
    });
    let store = open_store(&dir.path().join("index"), common::DIMENSION).await?;
    let mut ids_a = HashSet::new();
    let mut ids_b = HashSet::new();
    let mut points = Vec::new();
    for (seq, caption) in [
        "a cat sleeps on the sofa",
        "a dog runs in the park",
        "snow falls",
    ]
    .iter()
    .enumerate()
    {
        for (tenant, ids) in [("a", &mut ids_a), ("b", &mut ids_b)] {
            let point = point(
                embedder.as_ref(),
                tenant,
                &format!("{tenant}-cam"),
                seq as u64,
                caption,
            )?;
            ids.insert(point.id.to_string());
            points.push(point);
        }
    }
    store.upsert(points).await?;

    let mut config = config()?;
    config.server.max_request_bytes = 4096;
    config.server.max_concurrent_requests = max_concurrent_requests;
    config.server.tokens = vec![
        TokenConfig {
            tenant: "a".into(),
            token: TOKEN_A.into(),
            expires_at: String::new(),
        },
        TokenConfig {
            tenant: "b".into(),
            token: TOKEN_B.into(),
            expires_at: String::new(),
        },
        TokenConfig {
            tenant: "a".into(),
            token: TOKEN_OLD.into(),
            expires_at: "2020-01-01T00:00:00Z".into(),
        },
    ];
    let roles = Roles {
        query: true,
        ..Roles::default()
    };
    let settings = common::settings(&config, roles, dir.path())?;
    let slow: Arc<dyn TextEmbedder> = Arc::new(WordsEmbedder { delay });
    let node = Node::start(settings, async move {
        let _ = loaded.await;
        Ok(engine(store, slow, Arc::new(NoFrames)))
    })
    .await?;
    Ok(Fixture {
        node,
        ids_a,
        ids_b,
        _dir: dir,
    })
}

async fn health(node: &Node, service: &str) -> Result<i32> {
    let mut client = HealthClient::new(node.channel().await?);
    let response = client
        .check(HealthCheckRequest {
            service: service.into(),
        })
        .await?;
    Ok(response.into_inner().status)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_says_serving_only_once_models_are_loaded_and_reflection_lists_the_services()
-> Result<()> {
    let (loaded_tx, loaded) = tokio::sync::oneshot::channel();
    let fixture = query_node(8, Duration::ZERO, loaded).await?;
    let node = &fixture.node;
    assert_eq!(
        health(node, service_names::SEARCH).await?,
        ServingStatus::NotServing as i32
    );
    let early = SearchServiceClient::new(node.channel().await?)
        .search(authorized(search("cat"), Some(TOKEN_A)))
        .await
        .expect_err("models not loaded yet");
    assert_eq!(early.code(), Code::Unavailable, "{early:?}");

    let _ = loaded_tx.send(());
    let deadline = Instant::now() + Duration::from_secs(10);
    while health(node, service_names::SEARCH).await? != ServingStatus::Serving as i32 {
        ensure!(Instant::now() < deadline, "never SERVING");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(health(node, "").await?, ServingStatus::Serving as i32);

    // Reflection: a client without the .proto files learns the services.
    use tonic_reflection::pb::v1::ServerReflectionRequest;
    use tonic_reflection::pb::v1::server_reflection_client::ServerReflectionClient;
    use tonic_reflection::pb::v1::server_reflection_request::MessageRequest;
    use tonic_reflection::pb::v1::server_reflection_response::MessageResponse;
    let mut reflection = ServerReflectionClient::new(node.channel().await?);
    let request = ServerReflectionRequest {
        host: String::new(),
        message_request: Some(MessageRequest::ListServices(String::new())),
    };
    let mut responses = reflection
        .server_reflection_info(tokio_stream::iter([request]))
        .await?
        .into_inner();
    let Some(response) = responses.message().await? else {
        anyhow::bail!("no reflection answer");
    };
    let Some(MessageResponse::ListServicesResponse(list)) = response.message_response else {
        anyhow::bail!("unexpected reflection answer");
    };
    let names: Vec<String> = list
        .service
        .into_iter()
        .map(|service| service.name)
        .collect();
    assert!(
        names.iter().any(|name| name == service_names::SEARCH),
        "{names:?}"
    );
    assert!(
        names.iter().any(|name| name == "grpc.health.v1.Health"),
        "{names:?}"
    );

    // Clients that speak only v1alpha (Python's grpcio-reflection, Postman, older grpcurl)
    // learn the services too, and call Search from the descriptors alone.
    let script =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/reflection_client.py");
    let address = node.address.to_string();
    let output = tokio::task::spawn_blocking(move || {
        std::process::Command::new("python3")
            .arg(script)
            .args([address.as_str(), TOKEN_A, "a cat on the sofa"])
            .output()
    })
    .await??;
    ensure!(
        output.status.success(),
        "the Python reflection client (grpcio-reflection, installed by scripts/setup-test.sh) \
         failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    let answer: serde_json::Value = serde_json::from_slice(&output.stdout)?;
    let services = answer["services"].as_array().context("services")?;
    for name in [
        service_names::SEARCH,
        "grpc.health.v1.Health",
        "grpc.reflection.v1alpha.ServerReflection",
    ] {
        ensure!(
            services.iter().any(|service| service == name),
            "{name}: {answer}"
        );
    }
    let hits = answer["hits"].as_array().context("hits")?;
    ensure!(!hits.is_empty(), "{answer}");
    for hit in hits {
        let id = hit["id"].as_str().context("hit id")?;
        ensure!(fixture.ids_a.contains(id), "a hit outside tenant a: {hit}");
    }

    fixture.node.stop().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tokens_and_tenants_are_enforced() -> Result<()> {
    let (loaded_tx, loaded) = tokio::sync::oneshot::channel();
    let _ = loaded_tx.send(());
    let fixture = query_node(8, Duration::ZERO, loaded).await?;
    let mut client = SearchServiceClient::new(fixture.node.channel().await?);

    // 14: missing, wrong and expired tokens.
    for (token, expected) in [
        (None, "missing"),
        (Some("tenant-a-token-0123456780"), "unknown"),
        (Some(TOKEN_OLD), "expired"),
    ] {
        let status = client
            .search(authorized(search("cat"), token))
            .await
            .expect_err("refused");
        assert_eq!(
            status.code(),
            Code::Unauthenticated,
            "{token:?}: {status:?}"
        );
        assert!(status.message().contains(expected), "{}", status.message());
    }

    // 15: whatever filter tenant b sends, it only ever sees its own points.
    let filters: Vec<v1::SearchRequest> = vec![
        search("a cat sleeps on the sofa"),
        v1::SearchRequest {
            stream_id: Some("a-cam".into()),
            ..search("cat")
        },
        v1::SearchRequest {
            stream_id: Some("b-cam".into()),
            ..search("dog park")
        },
        v1::SearchRequest {
            from_ms: Some(0),
            to_ms: Some(1_000_000),
            ..search("snow")
        },
        v1::SearchRequest {
            top_k: 1000,
            ..search("a")
        },
    ];
    let mut seen_b = 0;
    for request in filters {
        let wants_a_stream = request.stream_id.as_deref() == Some("a-cam");
        let hits = client
            .search(authorized(request, Some(TOKEN_B)))
            .await?
            .into_inner()
            .hits;
        for hit in &hits {
            assert!(
                !fixture.ids_a.contains(&hit.id),
                "tenant b saw tenant a's {hit:?}"
            );
            assert!(fixture.ids_b.contains(&hit.id), "unknown hit {hit:?}");
        }
        if wants_a_stream {
            assert!(hits.is_empty(), "tenant b read a's stream: {hits:?}");
        }
        seen_b += hits.len();
    }
    assert!(seen_b > 0, "tenant b finds its own points");

    // Tenant a finds its own moment first.
    let hits = client
        .search(authorized(
            search("a cat sleeps on the sofa"),
            Some(TOKEN_A),
        ))
        .await?
        .into_inner()
        .hits;
    let Some(top) = hits.first() else {
        anyhow::bail!("no hits for tenant a");
    };
    assert!(fixture.ids_a.contains(&top.id));
    assert_eq!((top.stream_id.as_str(), top.start_ms), ("a-cam", 0));
    assert_eq!(top.caption, "a cat sleeps on the sofa");

    fixture.node.stop().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_search_requests_name_the_field() -> Result<()> {
    let (loaded_tx, loaded) = tokio::sync::oneshot::channel();
    let _ = loaded_tx.send(());
    let fixture = query_node(8, Duration::ZERO, loaded).await?;
    let mut client = SearchServiceClient::new(fixture.node.channel().await?);
    // 18, and the text limit below the byte limit.
    let cases = [
        (search("   "), "query"),
        (
            v1::SearchRequest {
                top_k: 0,
                ..search("cat")
            },
            "top_k",
        ),
        (
            v1::SearchRequest {
                top_k: 1_000_000,
                ..search("cat")
            },
            "top_k",
        ),
        (
            v1::SearchRequest {
                from_ms: Some(5_000),
                to_ms: Some(1_000),
                ..search("cat")
            },
            "from_ms",
        ),
        (
            v1::SearchRequest {
                mode: "telepathy".into(),
                ..search("cat")
            },
            "mode",
        ),
        (
            v1::SearchRequest {
                stream_id: Some(String::new()),
                ..search("cat")
            },
            "stream_id",
        ),
        (search(&"x".repeat(3000)), "query"),
    ];
    for (request, field) in cases {
        let status = client
            .search(authorized(request, Some(TOKEN_A)))
            .await
            .expect_err(field);
        assert_eq!(status.code(), Code::InvalidArgument, "{field}: {status:?}");
        assert!(
            status.message().starts_with(&format!("{field}: ")),
            "{}",
            status.message()
        );
    }
    fixture.node.stop().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_requests_and_floods_are_refused_without_hanging() -> Result<()> {
    let (loaded_tx, loaded) = tokio::sync::oneshot::channel();
    let _ = loaded_tx.send(());
    // Two requests at a time; each search takes 300 ms in the embedder.
    let fixture = query_node(2, Duration::from_millis(300), loaded).await?;
    let channel = fixture.node.channel().await?;

    // 16: a message over server.max_request_bytes (4 KiB here).
    let status = SearchServiceClient::new(channel.clone())
        .search(authorized(search(&"y".repeat(10_000)), Some(TOKEN_A)))
        .await
        .expect_err("too large");
    assert_eq!(status.code(), Code::ResourceExhausted, "{status:?}");

    // 16: a flood of 24 concurrent searches: the excess is refused at once.
    let started = Instant::now();
    let mut calls = Vec::new();
    for _ in 0..24 {
        let mut client = SearchServiceClient::new(channel.clone());
        calls.push(tokio::spawn(async move {
            client
                .search(authorized(search("cat"), Some(TOKEN_A)))
                .await
        }));
    }
    let (mut served, mut refused) = (0, 0);
    for call in calls {
        match call.await? {
            Ok(_) => served += 1,
            Err(status) if status.code() == Code::ResourceExhausted => refused += 1,
            Err(status) => anyhow::bail!("unexpected {status:?}"),
        }
    }
    let elapsed = started.elapsed();
    println!("flood: {served} served, {refused} refused in {elapsed:?}");
    assert!(
        served >= 2 && refused >= 10,
        "{served} served, {refused} refused"
    );
    assert!(
        elapsed < Duration::from_secs(10),
        "the flood made callers wait {elapsed:?}"
    );
    // Health checks are exempt, and the node serves normally afterwards.
    assert_eq!(
        health(&fixture.node, "").await?,
        ServingStatus::Serving as i32
    );
    SearchServiceClient::new(channel)
        .search(authorized(search("cat"), Some(TOKEN_A)))
        .await?;
    fixture.node.stop().await
}

/// A captioner on a pretend device that holds `fits` segments per call; its first call waits
/// for `gate`, so the test can look at the node while the warm-up runs.
struct SmallDevice {
    fits: usize,
    gate: std::sync::Mutex<Option<std::sync::mpsc::Receiver<()>>>,
}

impl vidx_core::ports::Captioner for SmallDevice {
    fn name(&self) -> &str {
        "small-device"
    }
    fn revision(&self) -> &str {
        "small-device-1"
    }
    fn needs_frames(&self) -> bool {
        true
    }
    fn caption(
        &self,
        segment: vidx_core::ports::SegmentInput<'_>,
    ) -> Result<Vec<vidx_core::Moment>, vidx_core::ModelError> {
        Ok(self.caption_batch(&[segment])?.remove(0))
    }
    fn caption_batch(
        &self,
        segments: &[vidx_core::ports::SegmentInput<'_>],
    ) -> Result<Vec<Vec<vidx_core::Moment>>, vidx_core::ModelError> {
        if let Some(gate) = self.gate.lock().ok().and_then(|mut gate| gate.take()) {
            let _ = gate.recv_timeout(Duration::from_secs(20));
        }
        if segments.len() > self.fits {
            return Err(vidx_core::ModelError::OutOfMemory {
                model: "small-device".into(),
                reason: "DriverError(CUDA_ERROR_OUT_OF_MEMORY, \"out of memory\")".into(),
            });
        }
        Ok(segments.iter().map(|_| Vec::new()).collect())
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_whose_warm_up_batch_does_not_fit_never_becomes_ready() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let broker = vidx_testkit::LocalBroker::start()?;
    let store = open_store(&dir.path().join("index"), common::DIMENSION).await?;
    let mut config = config()?;
    config.pipeline.max_batch = 4;
    let mut settings = common::settings(
        &config,
        Roles {
            worker: true,
            ..Roles::default()
        },
        dir.path(),
    )?;
    settings.kafka = broker.fresh_settings(2);
    let (release, gate) = std::sync::mpsc::channel();
    let mut engine = engine(
        store,
        Arc::new(WordsEmbedder {
            delay: Duration::ZERO,
        }),
        Arc::new(NoFrames),
    );
    engine.models = Arc::new(vidx_pipeline::Models {
        captioners: vec![Arc::new(SmallDevice {
            fits: 2,
            gate: std::sync::Mutex::new(Some(gate)),
        })],
        ..(*engine.models).clone()
    });
    let node = Node::start(settings, async move { Ok(engine) }).await?;

    // While the warm-up batch runs, the worker is not ready.
    assert_eq!(
        health(&node, service_names::WORKER).await?,
        ServingStatus::NotServing as i32
    );
    assert_eq!(health(&node, "").await?, ServingStatus::NotServing as i32);
    let _ = release.send(());

    // The batch of 4 does not fit a device that holds 2: the node fails to start, saying so.
    let error = match tokio::time::timeout(Duration::from_secs(30), node.task).await?? {
        Err(error) => error.to_string(),
        Ok(()) => anyhow::bail!("the node started although its warm-up batch does not fit"),
    };
    ensure!(
        error.contains("a batch of 4 segments") && error.contains("pipeline.max_batch"),
        "{error}"
    );
    Ok(())
}

/// `IndexService`: a tenant deletes only its own moments (another tenant's stream of the same
/// name is untouched, and deleting a stream it does not have deletes nothing), deletes are
/// idempotent, and bad requests name the field.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deletes_are_confined_to_the_callers_tenant_and_idempotent() -> Result<()> {
    use vidx_proto::v1::index_service_client::IndexServiceClient;
    let (loaded_tx, loaded) = tokio::sync::oneshot::channel();
    let _ = loaded_tx.send(());
    let fixture = query_node(8, Duration::ZERO, loaded).await?;
    let channel = fixture.node.channel().await?;
    let mut index = IndexServiceClient::new(channel.clone());
    let searches = SearchServiceClient::new(channel);
    let found =
        |hits: &[v1::Hit]| -> HashSet<String> { hits.iter().map(|hit| hit.id.clone()).collect() };
    let everything = |token| {
        let mut searches = searches.clone();
        async move {
            let request = v1::SearchRequest {
                top_k: 100,
                ..search("a cat sleeps on the sofa")
            };
            anyhow::Ok(
                searches
                    .search(authorized(request, Some(token)))
                    .await?
                    .into_inner()
                    .hits,
            )
        }
    };
    let stream = |stream_id: &str| v1::DeleteStreamRequest {
        stream_id: stream_id.into(),
    };

    // b asks to delete a's stream: nothing of a's goes.
    let response = index
        .delete_stream(authorized(stream("a-cam"), Some(TOKEN_B)))
        .await?
        .into_inner();
    assert_eq!(response.points, 0);
    assert_eq!(found(&everything(TOKEN_A).await?), fixture.ids_a);

    // a deletes its stream: exactly a's points go; b's stay.
    let response = index
        .delete_stream(authorized(stream("a-cam"), Some(TOKEN_A)))
        .await?
        .into_inner();
    assert_eq!(response.points, fixture.ids_a.len() as u64);
    assert!(everything(TOKEN_A).await?.is_empty());
    assert_eq!(found(&everything(TOKEN_B).await?), fixture.ids_b);
    // Again: nothing left, no error.
    let again = index
        .delete_stream(authorized(stream("a-cam"), Some(TOKEN_A)))
        .await?
        .into_inner();
    assert_eq!(again.points, 0);

    // Everything b stored before now.
    let now_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)?
        .as_millis() as u64;
    let response = index
        .delete_before(authorized(
            v1::DeleteBeforeRequest { before_ms: now_ms },
            Some(TOKEN_B),
        ))
        .await?
        .into_inner();
    assert_eq!(response.points, fixture.ids_b.len() as u64);
    assert!(everything(TOKEN_B).await?.is_empty());

    // Bad requests name the field; no token, no delete.
    let status = index
        .delete_stream(authorized(stream(" "), Some(TOKEN_A)))
        .await
        .expect_err("refused");
    assert_eq!(status.code(), Code::InvalidArgument);
    assert!(status.message().contains("stream_id"), "{status:?}");
    let status = index
        .delete_before(authorized(
            v1::DeleteBeforeRequest { before_ms: 0 },
            Some(TOKEN_A),
        ))
        .await
        .expect_err("refused");
    assert!(status.message().contains("before_ms"), "{status:?}");
    let status = index
        .delete_stream(authorized(stream("b-cam"), None))
        .await
        .expect_err("refused");
    assert_eq!(status.code(), Code::Unauthenticated);
    Ok(())
}
