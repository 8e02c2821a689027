import { defineConfig } from "vitest/config";
import { fileURLToPath } from "node:url";

export default defineConfig({
  root: fileURLToPath(new URL("..", import.meta.url)),
  test: {
    include: ["test/**/*.test.ts"],
    // End-to-end tests start the real binary and real servers.
    testTimeout: 30_000,
    hookTimeout: 120_000,
  },
});
