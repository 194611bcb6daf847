import { defineConfig } from "vite";

// Relative asset paths: Sluice serves the built client at `/` or behind a path prefix.
export default defineConfig({
  base: "./",
  build: { outDir: "dist", emptyOutDir: true, target: "es2022", chunkSizeWarningLimit: 4096 },
  worker: { format: "es" },
});
