// Compiles contracts/*.sol with the pinned npm `solc` into contracts/artifacts/<Name>.json.
//
// Usage: node contracts/build.mjs [--force]
//
// Each source must define a contract named like its file and import nothing, so files
// compile independently and only changed ones are recompiled. An artifact is up to date
// when its sourceHash (sha256 of the .sol) and compiler settings match; in that case solc
// is never loaded, which keeps the no-op run fast. Output is JSON with a fixed key order so the
// committed artifacts are byte-for-byte reproducible.

import { createHash } from "node:crypto";
import { mkdirSync, readdirSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { createRequire } from "node:module";
import { basename, dirname, join } from "node:path";
import { fileURLToPath } from "node:url";

const here = dirname(fileURLToPath(import.meta.url));
const artifactsDir = join(here, "artifacts");
const force = process.argv.includes("--force");

// Cancun, not solc's newer default: the bytecode then runs on anvil's default hardfork and
// on every chain a Kwala user is likely to point a flow at.
const EVM_VERSION = "cancun";
const OPTIMIZER = { enabled: true, runs: 200 };

function sha256(text) {
  return createHash("sha256").update(text).digest("hex");
}

function readArtifact(path) {
  try {
    return JSON.parse(readFileSync(path, "utf8"));
  } catch {
    return null;
  }
}

function isUpToDate(artifact, sourceHash, compilerVersion) {
  return (
    artifact !== null &&
    artifact.sourceHash === sourceHash &&
    artifact.evmVersion === EVM_VERSION &&
    artifact.optimizerRuns === OPTIMIZER.runs &&
    // The compiler version is only known once solc is loaded; the pinned package.json
    // version stands in for it so the no-op path never loads the 8 MB compiler.
    artifact.solcPackageVersion === compilerVersion
  );
}

function solcPackageVersion() {
  const pkg = JSON.parse(readFileSync(join(here, "..", "node_modules", "solc", "package.json"), "utf8"));
  return pkg.version;
}

function main() {
  const sources = readdirSync(here)
    .filter((f) => f.endsWith(".sol"))
    .sort();
  const packageVersion = solcPackageVersion();
  mkdirSync(artifactsDir, { recursive: true });

  const stale = [];
  for (const file of sources) {
    const name = basename(file, ".sol");
    const content = readFileSync(join(here, file), "utf8");
    const sourceHash = sha256(content);
    const artifact = readArtifact(join(artifactsDir, `${name}.json`));
    if (force || !isUpToDate(artifact, sourceHash, packageVersion)) {
      stale.push({ file, name, content, sourceHash });
    }
  }

  // An artifact whose source was deleted would keep a removed contract deployable.
  const expected = new Set(sources.map((f) => `${basename(f, ".sol")}.json`));
  for (const f of readdirSync(artifactsDir)) {
    if (f.endsWith(".json") && !expected.has(f)) {
      rmSync(join(artifactsDir, f));
      console.log(`removed stale artifacts/${f}`);
    }
  }

  if (stale.length === 0) {
    return 0;
  }

  const require = createRequire(import.meta.url);
  const solc = require("solc");
  const input = {
    language: "Solidity",
    sources: Object.fromEntries(stale.map((s) => [s.file, { content: s.content }])),
    settings: {
      optimizer: OPTIMIZER,
      evmVersion: EVM_VERSION,
      outputSelection: { "*": { "*": ["abi", "evm.bytecode.object"] } },
    },
  };
  const output = JSON.parse(solc.compile(JSON.stringify(input)));
  const errors = (output.errors || []).filter((e) => e.severity === "error");
  for (const e of output.errors || []) {
    if (e.severity !== "error") console.error(e.formattedMessage.trim());
  }
  if (errors.length > 0) {
    for (const e of errors) console.error(e.formattedMessage.trim());
    return 1;
  }

  let failed = false;
  for (const s of stale) {
    const compiled = output.contracts?.[s.file]?.[s.name];
    if (!compiled) {
      console.error(`${s.file}: no contract named ${s.name} (each file must define a contract named like the file)`);
      failed = true;
      continue;
    }
    const artifact = {
      contractName: s.name,
      abi: compiled.abi,
      bytecode: `0x${compiled.evm.bytecode.object}`,
      sourceHash: s.sourceHash,
      compiler: solc.version(),
      solcPackageVersion: packageVersion,
      evmVersion: EVM_VERSION,
      optimizerRuns: OPTIMIZER.runs,
    };
    const path = join(artifactsDir, `${s.name}.json`);
    writeFileSync(path, `${JSON.stringify(artifact, null, 2)}\n`);
    console.log(`compiled ${s.file} -> artifacts/${s.name}.json`);
  }
  return failed ? 1 : 0;
}

process.exitCode = main();
