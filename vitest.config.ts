import { defineConfig } from 'vitest/config'

export default defineConfig({
  test: {
    include: ['test/**/*.test.ts'],
    testTimeout: 30_000,
    hookTimeout: 60_000,
    // Integration suites bind ports and share one PostgreSQL; forks keep them isolated.
    pool: 'forks',
    fileParallelism: true,
    maxWorkers: 2,
  },
})
