/** A mistake in the command line or its arguments: the CLI prints it and exits 2. */
export class UsageError extends Error {}
