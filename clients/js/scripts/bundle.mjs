// The browser bundle the dashboard serves: dist/ (tsc's output) → one ES module per entry.
//
//   /static/client.js       the package's root export (RealtimeClient, protocol tables, …)
//   /static/react-hooks.js  createRealtimeHooks(React, options), importing ./client.js
//
// Written into app/dashboard/static/ and committed, so a `pip install` without npm still serves
// a dashboard; tests/test_client_js.py rebuilds and fails when the committed files differ.
import { build } from "esbuild";
import { fileURLToPath } from "node:url";
import { readFile } from "node:fs/promises";

const here = (path) => fileURLToPath(new URL(path, import.meta.url));
const pkg = JSON.parse(await readFile(here("../package.json"), "utf8"));
const out = process.env.BUNDLE_OUT_DIR || here("../../../app/dashboard/static");
const banner = `// ${pkg.name} ${pkg.version}: generated from clients/js by \`npm run build\`; do not edit.`;

const common = {
  bundle: true,
  format: "esm",
  target: "es2022",
  platform: "browser",
  banner: { js: banner },
  legalComments: "none",
  logLevel: "warning",
};

await build({ ...common, entryPoints: [here("../dist/index.js")], outfile: `${out}/client.js` });
await build({
  ...common,
  entryPoints: [here("../dist/hooks.js")],
  outfile: `${out}/react-hooks.js`,
  // One client module per page: the hooks import the one /static/client.js serves.
  plugins: [
    {
      name: "client-external",
      setup(b) {
        b.onResolve({ filter: /^\.\/client\.js$/ }, () => ({ path: "./client.js", external: true }));
      },
    },
  ],
});
