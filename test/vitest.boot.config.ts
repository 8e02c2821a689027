import { defineConfig } from "vitest/config";
import { fileURLToPath } from "node:url";

// The real boot (npm run test:boot): minutes, not seconds, so not in the
// default run. Building the cached Debian tree the first time takes a few.
export default defineConfig({
  root: fileURLToPath(new URL("..", import.meta.url)),
  test: {
    include: ["test/boot.e2e.ts"],
    testTimeout: 15 * 60_000,
    hookTimeout: 30 * 60_000,
  },
});
