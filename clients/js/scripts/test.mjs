// `npm test`: start a real context-manager on free ports, run test/*.test.mjs with Node's test
// runner against it, stop it. The server is the repository's (.venv/bin/context-manager, made
// by `make .venv/.installed`) or CONTEXT_MANAGER_BIN; CM_WS_URL/CM_API_URL point at one already
// running instead.
import { spawn } from "node:child_process";
import { mkdtempSync, rmSync, existsSync, readdirSync } from "node:fs";
import { createServer } from "node:net";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { fileURLToPath } from "node:url";

const root = fileURLToPath(new URL("..", import.meta.url));

function freePort() {
  return new Promise((resolve, reject) => {
    const server = createServer();
    server.once("error", reject);
    server.listen(0, "127.0.0.1", () => {
      const { port } = server.address();
      server.close(() => resolve(port));
    });
  });
}

async function waitFor(url, seconds) {
  const deadline = Date.now() + seconds * 1000;
  for (;;) {
    try {
      if ((await fetch(url)).ok) return;
    } catch {
      /* not yet */
    }
    if (Date.now() > deadline) throw new Error(`${url} did not answer within ${seconds} s`);
    await new Promise((r) => setTimeout(r, 100));
  }
}

const env = { ...process.env };
let server = null;
let dataDir = null;
if (!env.CM_WS_URL) {
  const bin = env.CONTEXT_MANAGER_BIN || join(root, "../../.venv/bin/context-manager");
  if (!existsSync(bin)) {
    console.error(`no server to test against: ${bin} is missing (run \`make .venv/.installed\` at the repository root, or set CONTEXT_MANAGER_BIN or CM_WS_URL)`);
    process.exit(2);
  }
  const [ws, api, dashboard] = [await freePort(), await freePort(), await freePort()];
  dataDir = mkdtempSync(join(tmpdir(), "cm-js-test-"));
  server = spawn(bin, ["serve"], {
    stdio: ["ignore", "ignore", "inherit"],
    env: {
      ...env,
      HOST: "127.0.0.1",
      WS_PORT: String(ws),
      API_PORT: String(api),
      DASHBOARD_PORT: String(dashboard),
      DATABASE_URL: `sqlite+aiosqlite:///${join(dataDir, "test.db")}`,
      METRICS_INTERVAL: "0.5",
      LOG_LEVEL: "warning",
    },
  });
  env.CM_WS_URL = `ws://127.0.0.1:${ws}/ws`;
  env.CM_API_URL = `http://127.0.0.1:${api}`;
  await waitFor(`http://127.0.0.1:${ws}/health`, 30);
  await waitFor(`${env.CM_API_URL}/health`, 30);
}

// Node 20 has the browser's WebSocket behind a flag; 22+ has it by default.
const flags = typeof WebSocket === "function" ? [] : ["--experimental-websocket"];
const files = readdirSync(join(root, "test"))
  .filter((name) => name.endsWith(".test.mjs"))
  .map((name) => join(root, "test", name));
const code = await new Promise((resolve) => {
  const child = spawn(process.execPath, [...flags, "--test", ...files], { stdio: "inherit", env });
  child.on("exit", (status) => resolve(status ?? 1));
});
if (server) {
  server.kill("SIGTERM");
  await new Promise((r) => server.once("exit", r));
  rmSync(dataDir, { recursive: true, force: true });
}
process.exit(code);
