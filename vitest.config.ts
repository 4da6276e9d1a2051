import { configDefaults, defineConfig } from 'vitest/config';

// The tests are the TypeScript under test/; dist/ holds their compiled copies (tsc builds test/ for
// the benchmarks and the demo), which must not run a second time.
export default defineConfig({
  test: {
    dir: 'test',
    exclude: [...configDefaults.exclude, 'dist/**'],
  },
});
