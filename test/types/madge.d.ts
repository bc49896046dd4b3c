// madge 8 ships no type declarations (and there is no @types/madge): the part of its API test/unit/architecture.test.ts
// uses, as documented in its README.
declare module 'madge' {
  export interface MadgeConfig {
    /** paths in the results are relative to it */
    baseDir?: string
    fileExtensions?: string[]
    /** path of a tsconfig.json (or its parsed contents), for resolving TypeScript imports */
    tsConfig?: string | object
    excludeRegExp?: RegExp[]
  }

  export interface MadgeResult {
    /** file → the files it imports */
    obj(): Record<string, string[]>
    /** each import cycle as the files on it */
    circular(): string[][]
    /** `skipped`: imports it could not resolve to a file */
    warnings(): { skipped: string[] }
  }

  export default function madge(path: string | string[], config?: MadgeConfig): Promise<MadgeResult>
}
