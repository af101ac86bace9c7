//! Logs and traces for every vidx process.
//!
//! - Logs go to stderr as text or one JSON object per line (`--log-format json`), filtered by
//!   `RUST_LOG` or the default filter.
//! - Traces: when `OTEL_EXPORTER_OTLP_ENDPOINT` (or `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`) is
//!   set, `tracing` spans are exported over OTLP/gRPC in batches; `OTEL_SERVICE_NAME` names the
//!   service (default: the process's role), `OTEL_RESOURCE_ATTRIBUTES` adds attributes,
//!   `OTEL_EXPORTER_OTLP_HEADERS`/`_TIMEOUT` are honoured by the exporter, and
//!   `OTEL_SDK_DISABLED=true` or `OTEL_TRACES_EXPORTER=none` turn export off.
//! - Propagation: W3C trace context. [`inject`] writes the current span's context into a
//!   carrier (a segment task, which Kafka sends as message headers); [`set_parent`] makes a
//!   span the child of a carrier's context, so one trace runs from ingest through the
//!   worker to the store.

use std::collections::BTreeMap;

use opentelemetry::propagation::TextMapPropagator;
use opentelemetry::trace::TracerProvider as _;
use opentelemetry_otlp::WithExportConfig;
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::{SdkTracerProvider, SpanExporter};
use tracing_opentelemetry::OpenTelemetrySpanExt;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{EnvFilter, Layer, Registry};

/// How log lines look.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum LogFormat {
    #[default]
    Text,
    /// One JSON object per line: `timestamp`, `level`, `fields`, `target`, `span`, `spans`.
    Json,
}

impl LogFormat {
    pub fn parse(value: &str) -> Result<Self, TelemetryError> {
        match value {
            "text" => Ok(LogFormat::Text),
            "json" => Ok(LogFormat::Json),
            other => Err(TelemetryError::Config(format!(
                "log format `{other}`: expected text or json"
            ))),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum TelemetryError {
    #[error("telemetry configuration: {0}")]
    Config(String),
    #[error("OTLP exporter: {0}")]
    Exporter(String),
}

/// What `init` sets up.
#[derive(Debug, Clone)]
pub struct TelemetryOptions {
    pub log_format: LogFormat,
    /// The filter when `RUST_LOG` is not set (`EnvFilter` syntax).
    pub default_filter: String,
    /// Colours in text logs.
    pub ansi: bool,
    /// `service.name` when `OTEL_SERVICE_NAME` is not set.
    pub service_name: String,
}

/// Keeps the trace exporter alive; `shutdown` flushes the spans still buffered.
#[derive(Debug, Default)]
pub struct Telemetry {
    provider: Option<SdkTracerProvider>,
}

impl Telemetry {
    /// Whether spans are exported.
    pub fn exporting(&self) -> bool {
        self.provider.is_some()
    }

    /// Flush and stop the exporter (at process exit).
    pub fn shutdown(self) {
        if let Some(provider) = self.provider {
            let _ = provider.force_flush();
            let _ = provider.shutdown();
        }
    }
}

/// The OTLP traces endpoint from the environment, unless export is turned off.
pub fn otlp_endpoint(env: &BTreeMap<String, String>) -> Option<String> {
    let disabled = env
        .get("OTEL_SDK_DISABLED")
        .is_some_and(|value| value.eq_ignore_ascii_case("true"))
        || env
            .get("OTEL_TRACES_EXPORTER")
            .is_some_and(|value| value.eq_ignore_ascii_case("none"));
    if disabled {
        return None;
    }
    env.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")
        .or_else(|| env.get("OTEL_EXPORTER_OTLP_ENDPOINT"))
        .filter(|endpoint| !endpoint.trim().is_empty())
        .cloned()
}

/// Install the global subscriber (logs, and traces when configured) and the W3C propagator.
/// A second call in one process leaves the first subscriber in place.
pub fn init(
    options: &TelemetryOptions,
    env: &BTreeMap<String, String>,
) -> Result<Telemetry, TelemetryError> {
    let provider = match otlp_endpoint(env) {
        Some(endpoint) => {
            let exporter = opentelemetry_otlp::SpanExporter::builder()
                .with_tonic()
                .with_endpoint(endpoint)
                .build()
                .map_err(|error| TelemetryError::Exporter(error.to_string()))?;
            let service_name = env
                .get("OTEL_SERVICE_NAME")
                .cloned()
                .unwrap_or_else(|| options.service_name.clone());
            Some(provider_with(exporter, &service_name, false))
        }
        None => None,
    };
    let filter = env
        .get("RUST_LOG")
        .and_then(|value| EnvFilter::try_new(value).ok())
        .unwrap_or_else(|| EnvFilter::new(&options.default_filter));
    let logs = match options.log_format {
        LogFormat::Text => tracing_subscriber::fmt::layer()
            .with_writer(std::io::stderr)
            .with_ansi(options.ansi)
            .with_target(false)
            .boxed(),
        LogFormat::Json => json_logs(std::io::stderr).boxed(),
    };
    // Only vidx's own spans are exported (not the HTTP/2 and Kafka clients' internals).
    let traces = provider.as_ref().map(|provider| {
        trace_layer(provider).with_filter(tracing_subscriber::filter::filter_fn(|metadata| {
            metadata.target().starts_with("vidx")
        }))
    });
    let _ = tracing_subscriber::registry()
        .with(traces)
        .with(logs.with_filter(filter))
        .try_init();
    opentelemetry::global::set_text_map_propagator(TraceContextPropagator::new());
    Ok(Telemetry { provider })
}

/// The JSON log layer: one object per line with the fields of the event, of its span and of
/// every span above it (`span`, `spans`), so a line inside a traced request or segment
/// carries that span's `trace_id`.
pub fn json_logs<S, W>(writer: W) -> impl Layer<S> + Send + Sync
where
    S: tracing::Subscriber + for<'span> tracing_subscriber::registry::LookupSpan<'span>,
    W: for<'writer> tracing_subscriber::fmt::MakeWriter<'writer> + Send + Sync + 'static,
{
    tracing_subscriber::fmt::layer()
        .json()
        .with_current_span(true)
        .with_span_list(true)
        .with_writer(writer)
}

/// A tracer provider over `exporter` (`simple`: export each span when it ends, for tests;
/// otherwise in batches).
pub fn provider_with<E: SpanExporter + 'static>(
    exporter: E,
    service_name: &str,
    simple: bool,
) -> SdkTracerProvider {
    let builder = SdkTracerProvider::builder().with_resource(
        Resource::builder()
            .with_service_name(service_name.to_string())
            .build(),
    );
    if simple {
        builder.with_simple_exporter(exporter).build()
    } else {
        builder.with_batch_exporter(exporter).build()
    }
}

/// The `tracing` layer that turns spans into OpenTelemetry spans of `provider`.
pub fn trace_layer(provider: &SdkTracerProvider) -> Box<dyn Layer<Registry> + Send + Sync> {
    tracing_opentelemetry::layer()
        .with_tracer(provider.tracer("vidx"))
        .boxed()
}

/// Install a subscriber that only records spans into `provider` and the W3C propagator (for
/// tests that capture spans).
pub fn init_for_capture(provider: &SdkTracerProvider) {
    let _ = tracing_subscriber::registry()
        .with(trace_layer(provider))
        .try_init();
    opentelemetry::global::set_text_map_propagator(TraceContextPropagator::new());
}

/// The W3C trace context (`traceparent`, `tracestate`) of `span`; empty when the span is not
/// recorded by an OpenTelemetry layer.
pub fn inject(span: &tracing::Span) -> BTreeMap<String, String> {
    let context = span.context();
    let mut carrier = std::collections::HashMap::new();
    TraceContextPropagator::new().inject_context(&context, &mut carrier);
    carrier.into_iter().collect()
}

/// Make `span` a child of the context in `carrier` (no-op for an empty or invalid one), and
/// record the trace id in its `trace_id` field when it declares one (JSON log lines inside
/// the span then carry it, with or without a trace exporter).
pub fn set_parent(span: &tracing::Span, carrier: &BTreeMap<String, String>) {
    if !carrier.is_empty() {
        let map: std::collections::HashMap<String, String> = carrier
            .iter()
            .map(|(key, value)| (key.clone(), value.clone()))
            .collect();
        let context = TraceContextPropagator::new().extract(&map);
        let _ = span.set_parent(context);
    }
    if let Some(trace_id) = trace_id(span).or_else(|| carrier_trace_id(carrier)) {
        span.record("trace_id", trace_id.as_str());
    }
}

/// The trace id of `span` (32 hex digits) when an OpenTelemetry layer records it.
pub fn trace_id(span: &tracing::Span) -> Option<String> {
    use opentelemetry::trace::TraceContextExt;
    let context = span.context();
    let span_context = context.span().span_context().clone();
    span_context
        .is_valid()
        .then(|| span_context.trace_id().to_string())
}

/// The trace id of a W3C `traceparent` in `carrier` (`00-<trace id>-<span id>-<flags>`).
pub fn carrier_trace_id(carrier: &BTreeMap<String, String>) -> Option<String> {
    let mut parts = carrier.get("traceparent")?.trim().split('-');
    let (_version, trace_id) = (parts.next()?, parts.next()?);
    let valid = trace_id.len() == 32
        && trace_id.bytes().all(|byte| byte.is_ascii_hexdigit())
        && trace_id.bytes().any(|byte| byte != b'0');
    valid.then(|| trace_id.to_ascii_lowercase())
}

/// The server span of one gRPC request: `grpc.request`, `rpc.method` the request path,
/// a child of the caller's trace when the request carries W3C trace context headers
/// (`carrier`), with its trace id in the `trace_id` field.
pub fn request_span(method: &str, carrier: &BTreeMap<String, String>) -> tracing::Span {
    let span = tracing::info_span!(
        "grpc.request",
        otel.kind = "server",
        rpc.system = "grpc",
        rpc.method = %method,
        trace_id = tracing::field::Empty,
    );
    set_parent(&span, carrier);
    span
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(key, value)| (key.to_string(), value.to_string()))
            .collect()
    }

    #[test]
    fn the_endpoint_comes_from_the_otel_variables_unless_disabled() {
        assert_eq!(otlp_endpoint(&env(&[])), None);
        assert_eq!(
            otlp_endpoint(&env(&[("OTEL_EXPORTER_OTLP_ENDPOINT", "http://c:4317")])),
            Some("http://c:4317".into())
        );
        assert_eq!(
            otlp_endpoint(&env(&[
                ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://c:4317"),
                ("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "http://t:4317"),
            ])),
            Some("http://t:4317".into())
        );
        for off in [
            ("OTEL_SDK_DISABLED", "true"),
            ("OTEL_TRACES_EXPORTER", "none"),
        ] {
            assert_eq!(
                otlp_endpoint(&env(&[
                    ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://c:4317"),
                    off
                ])),
                None
            );
        }
    }

    #[test]
    fn log_formats_parse_and_bad_ones_are_named() {
        assert_eq!(LogFormat::parse("json").ok(), Some(LogFormat::Json));
        assert_eq!(LogFormat::parse("text").ok(), Some(LogFormat::Text));
        let error = LogFormat::parse("xml").err().map(|error| error.to_string());
        assert!(error.is_some_and(|message| message.contains("xml")));
    }
}
