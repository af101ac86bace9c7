//! The trace context survives a carrier: a span made a child of an injected context joins
//! the injecting span's trace, with it as parent (what Kafka headers carry between services).

use opentelemetry::trace::TraceId;
use opentelemetry_sdk::trace::InMemorySpanExporter;

#[test]
fn a_carrier_continues_the_trace() {
    let exporter = InMemorySpanExporter::default();
    let provider = vidx_telemetry::provider_with(exporter.clone(), "test", true);
    vidx_telemetry::init_for_capture(&provider);

    let publish = tracing::info_span!("segment.publish", segment_seq = 7u64);
    let carrier = publish.in_scope(|| vidx_telemetry::inject(&publish));
    let traceparent = carrier.get("traceparent").cloned().unwrap_or_default();
    assert!(
        traceparent.starts_with("00-"),
        "traceparent {traceparent:?}"
    );
    drop(publish);

    // Elsewhere (another task, another process), with only the carrier.
    let index = tracing::info_span!("segment.index", segment_seq = 7u64);
    vidx_telemetry::set_parent(&index, &carrier);
    index.in_scope(|| tracing::info_span!("store.upsert").in_scope(|| {}));
    drop(index);
    // An empty carrier starts a new trace.
    let alone = tracing::info_span!("segment.index", segment_seq = 8u64);
    vidx_telemetry::set_parent(&alone, &Default::default());
    drop(alone);

    let _ = provider.force_flush();
    let spans = exporter.get_finished_spans().expect("finished spans");
    let find = |name: &str, seq: Option<i64>| {
        spans
            .iter()
            .find(|span| {
                span.name == name
                    && seq.is_none_or(|seq| {
                        span.attributes.iter().any(|attribute| {
                            attribute.key.as_str() == "segment_seq"
                                && attribute.value.to_string() == seq.to_string()
                        })
                    })
            })
            .unwrap_or_else(|| panic!("no span {name} in {spans:#?}"))
    };
    let publish = find("segment.publish", Some(7));
    let index = find("segment.index", Some(7));
    let upsert = find("store.upsert", None);
    let alone = find("segment.index", Some(8));
    assert_ne!(publish.span_context.trace_id(), TraceId::INVALID);
    assert_eq!(
        index.span_context.trace_id(),
        publish.span_context.trace_id()
    );
    assert_eq!(index.parent_span_id, publish.span_context.span_id());
    assert_eq!(
        upsert.span_context.trace_id(),
        publish.span_context.trace_id()
    );
    assert_ne!(
        alone.span_context.trace_id(),
        publish.span_context.trace_id()
    );
}

#[test]
fn a_request_span_joins_the_caller_s_trace_and_names_it() {
    // Without a trace exporter the id comes from the header itself.
    let carrier = std::collections::BTreeMap::from([(
        "traceparent".to_string(),
        "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01".to_string(),
    )]);
    assert_eq!(
        vidx_telemetry::carrier_trace_id(&carrier).as_deref(),
        Some("4bf92f3577b34da6a3ce929d0e0e4736")
    );
    for bad in [
        "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
        "00-4bf92f35-00f067aa0ba902b7-01",
        "garbage",
    ] {
        let carrier =
            std::collections::BTreeMap::from([("traceparent".to_string(), bad.to_string())]);
        assert_eq!(vidx_telemetry::carrier_trace_id(&carrier), None, "{bad}");
    }

    // This thread's own subscriber (the other test installs the global one).
    use tracing_subscriber::layer::SubscriberExt;
    let exporter = InMemorySpanExporter::default();
    let provider = vidx_telemetry::provider_with(exporter.clone(), "test", true);
    let subscriber = tracing_subscriber::registry().with(vidx_telemetry::trace_layer(&provider));
    tracing::subscriber::with_default(subscriber, || {
        let span = vidx_telemetry::request_span("/vidx.v1.SearchService/Search", &carrier);
        assert_eq!(
            vidx_telemetry::trace_id(&span).as_deref(),
            Some("4bf92f3577b34da6a3ce929d0e0e4736")
        );
    });
    let _ = provider.force_flush();
    let spans = exporter.get_finished_spans().expect("finished spans");
    let request = spans
        .iter()
        .find(|span| span.name == "grpc.request")
        .expect("a grpc.request span");
    assert_eq!(
        request.span_context.trace_id().to_string(),
        "4bf92f3577b34da6a3ce929d0e0e4736"
    );
    assert_eq!(request.parent_span_id.to_string(), "00f067aa0ba902b7");
}

/// A log sink the test reads back.
#[derive(Clone, Default)]
struct Captured(std::sync::Arc<std::sync::Mutex<Vec<u8>>>);

impl std::io::Write for Captured {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        if let Ok(mut buffer) = self.0.lock() {
            buffer.extend_from_slice(bytes);
        }
        Ok(bytes.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[test]
fn json_log_lines_inside_a_request_carry_its_trace_id() {
    use tracing_subscriber::layer::SubscriberExt;
    let captured = Captured::default();
    let writer = captured.clone();
    let subscriber =
        tracing_subscriber::registry().with(vidx_telemetry::json_logs(move || writer.clone()));
    let carrier = std::collections::BTreeMap::from([(
        "traceparent".to_string(),
        "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01".to_string(),
    )]);
    tracing::subscriber::with_default(subscriber, || {
        let span = vidx_telemetry::request_span("/vidx.v1.SearchService/Search", &carrier);
        span.in_scope(|| tracing::info!(hits = 3, "search answered"));
    });
    let text = String::from_utf8(captured.0.lock().map(|b| b.clone()).unwrap_or_default())
        .expect("UTF-8 logs");
    let line = text
        .lines()
        .find(|line| line.contains("search answered"))
        .unwrap_or_else(|| panic!("no log line in {text:?}"));
    let value: serde_json::Value = serde_json::from_str(line).expect("a JSON line");
    assert_eq!(
        value["span"]["trace_id"], "0af7651916cd43dd8448eb211c80319c",
        "{line}"
    );
    assert_eq!(
        value["span"]["rpc.method"], "/vidx.v1.SearchService/Search",
        "{line}"
    );
}
