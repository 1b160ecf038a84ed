// Contract app, v3 API (`MiniAppServer` + `MentraSession`, 3.0.0-alpha.4) under Bun: webhook -> header-
// identified init -> camera.startStream({direct: url}) (or a managed stream when STREAM_URL is "managed")
// -> "active" -> display.showTextWall -> speaker.speak -> an audio output stream (binary frames) ->
// stopStream. Listens with Bun.serve on 127.0.0.1 (see v2.mjs for why not `start()`).
import { pathToFileURL } from "node:url";

const env = (name) => {
  const v = process.env[name];
  if (!v) { console.error(`missing env ${name}`); process.exit(2); }
  return v;
};
const { MiniAppServer } = await import(pathToFileURL(`${env("SDK_DIR")}/sdk.mjs`).href);
const PORT = Number(env("PORT"));
const STREAM_URL = env("STREAM_URL");

const mark = (step, extra = {}) => console.log(`CONTRACT ${step} ${JSON.stringify(extra)}`);
const withTimeout = (p, ms, what) => Promise.race([
  p, new Promise((_, rej) => setTimeout(() => rej(new Error(`${what} timed out`)), ms)),
]);

async function whenActive(session) {
  session.display.showTextWall("SDK contract: stream active");
  try {
    const r = await withTimeout(session.speaker.speak("I see a cat"), 5000, "speak");
    mark("speak", { success: r.success ?? null });
  } catch (e) {
    mark("speak_failed", { error: String(e) });
  }
  try {
    const out = await withTimeout(session.speaker.createStream(), 5000, "audio stream");
    out.write(new Uint8Array(1024).fill(0xff));
    await out.end();
    mark("audio_stream", { ok: true });
  } catch (e) {
    mark("audio_stream_failed", { error: String(e) });
  }
  await session.camera.stopStream();
  mark("stop_sent");
}

const app = new MiniAppServer({ packageName: env("PACKAGE_NAME"), apiKey: env("MENTRAOS_API_KEY"), port: PORT });
app.onSession(async (session) => {
  mark("session", { userId: session.userId ?? null, capabilities: session.capabilities?.modelName ?? null });
  if (STREAM_URL === "managed") {
    session.camera.startStream()
      .then((urls) => { mark("managed_active", urls); return whenActive(session); })
      .catch((e) => mark("start_failed", { error: String(e) }));
    return;
  }
  let sawActive = false;
  session.camera.onStreamStatus((status) => {
    mark("status", { streamId: status.streamId, status: status.status });
    if (status.status === "active" && !sawActive) {
      sawActive = true;
      whenActive(session);
    }
  });
  session.camera.startStream({ direct: STREAM_URL })
    .then(() => mark("start_sent", { url: STREAM_URL }))
    .catch((e) => mark("start_failed", { error: String(e) }));
});
app.onStop((session, reason) => mark("stop", { reason }));

Bun.serve({ port: PORT, hostname: "127.0.0.1", fetch: app.fetch });
mark("listening", { port: PORT, runtime: `bun ${Bun.version}` });
