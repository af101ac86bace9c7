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
