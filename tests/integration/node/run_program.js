'use strict';
// The program of run_program() in tests/integration/test_export.py, written with the Node.js
// OpenTelemetry SDK and sent to a bridge with its official OTLP/HTTP exporters:
//   node run_program.js <bridge URL> <protobuf|json> <run key> <run name> <folder>
// A root span `simvue.run` with the run's state, 50 `simvue.metrics` log records, a counter,
// an event, a warning and a child span; then every provider is flushed and shut down.
const api = require('@opentelemetry/api');
const { SeverityNumber } = require('@opentelemetry/api-logs');
const { resourceFromAttributes } = require('@opentelemetry/resources');
const { BasicTracerProvider, BatchSpanProcessor } = require('@opentelemetry/sdk-trace-base');
const { LoggerProvider, BatchLogRecordProcessor } = require('@opentelemetry/sdk-logs');
const { MeterProvider, PeriodicExportingMetricReader } = require('@opentelemetry/sdk-metrics');

const [endpoint, encoding, key, name, folder] = process.argv.slice(2);
const flavour = encoding === 'json' ? 'http' : 'proto'; // the -http exporters send OTLP/JSON
const { OTLPTraceExporter } = require(`@opentelemetry/exporter-trace-otlp-${flavour}`);
const { OTLPLogExporter } = require(`@opentelemetry/exporter-logs-otlp-${flavour}`);
const { OTLPMetricExporter } = require(`@opentelemetry/exporter-metrics-otlp-${flavour}`);

const ROOT_ATTRS = {
  'simvue.run.description': 'an OTel-only app',
  'simvue.run.tags': ['otel', 'demo'],
  'simvue.run.metadata.solver.tol': 1e-6,
  'simvue.run.metadata.solver.name': 'cg',
  'simvue.run.metadata.n': 64,
  'simvue.run.visibility': 'tenant',
  'simvue.run.retention_seconds': 3600,
};

// Export failures are printed (the SDK is silent by default), for the test's failure message.
api.diag.setLogger(new api.DiagConsoleLogger(), api.DiagLogLevel.WARN);

async function main() {
  const resource = resourceFromAttributes({
    'service.name': 'node-interop',
    'simvue.run.key': key,
    'simvue.run.name': name,
    'simvue.run.folder': folder,
  });
  const tracerProvider = new BasicTracerProvider({
    resource,
    spanProcessors: [new BatchSpanProcessor(new OTLPTraceExporter({ url: `${endpoint}/v1/traces` }))],
  });
  const loggerProvider = new LoggerProvider({
    resource,
    processors: [
      new BatchLogRecordProcessor({ exporter: new OTLPLogExporter({ url: `${endpoint}/v1/logs` }) }),
    ],
  });
  const reader = new PeriodicExportingMetricReader({
    exporter: new OTLPMetricExporter({ url: `${endpoint}/v1/metrics` }),
    exportIntervalMillis: 3600000,
  });
  const meterProvider = new MeterProvider({ resource, readers: [reader] });

  const tracer = tracerProvider.getTracer('app');
  const logger = loggerProvider.getLogger('app');
  const counter = meterProvider.getMeter('app').createCounter('iterations');
  const root = tracer.startSpan('simvue.run', { attributes: ROOT_ATTRS });
  // No context manager is registered: the root span's context is passed explicitly, so the
  // records carry its trace id as the Python program's do.
  const inRun = api.trace.setSpan(api.context.active(), root);
  for (let step = 0; step < 50; step++) {
    logger.emit({
      eventName: 'simvue.metrics',
      body: { loss: 1.0 / (step + 1), residual: step * 0.5 },
      attributes: { 'simvue.metrics.step': step, 'simvue.metrics.time': step * 0.1 },
      context: inRun,
    });
    counter.add(1, { phase: 'solve' });
  }
  logger.emit({ eventName: 'simvue.event', body: 'converged', context: inRun });
  logger.emit({ body: 'mesh is coarse', severityNumber: SeverityNumber.WARN, context: inRun });
  tracer.startSpan('assemble', {}, inRun).end();
  await meterProvider.forceFlush();
  root.end();
  await meterProvider.shutdown();
  await loggerProvider.shutdown();
  await tracerProvider.shutdown();
}

main().catch((error) => {
  console.error(error);
  process.exit(1);
});
