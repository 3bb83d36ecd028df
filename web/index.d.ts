// Type declarations for sinkstream's browser package.

export type Policy = "sink" | "window" | "dense" | "recompute";

export interface CacheOptions {
  /** "sink" (default): S attention sinks + a ring of W recent tokens. */
  policy?: Policy;
  /** Attention-sink slots (default 4). */
  sinks?: number;
  /** Ring slots for recent tokens; the current token counts in W (default 1020). */
  window?: number;
  /** The dense policy's maximum context (default: the model's). */
  maxContext?: number;
  /** Tokens per GPU block when feeding prompts (default 64). */
  batch?: number;
}

export interface SamplingOptions {
  /** 0 = greedy (the default). */
  temperature?: number;
  /** 0 = off. */
  topK?: number;
  /** 1 = off. */
  topP?: number;
  /** 1 = off; > 1 discourages repeats. */
  repetitionPenalty?: number;
  seed?: number;
}

export interface Progress {
  /** "download" | "cache" (reading Cache Storage) | "read" (a File/Blob) | "parse" | "gpu" | "ready" */
  phase: string;
  loaded: number;
  /** 0 when unknown. */
  total: number;
  /** The file being read, when a checkpoint of several files is loaded. */
  file?: string;
}

export interface LoadOptions extends CacheOptions, SamplingOptions {
  onProgress?: (p: Progress) => void;
  /** Cache Storage name used for URLs (default "sinkstream-models"); null to never cache. */
  cacheName?: string | null;
  /** The chat's system prompt (default: the template's own). */
  system?: string;
  /** A name for error messages. */
  name?: string;
  /** Where sinkstream_bg.wasm lives (default: next to pkg/sinkstream.js). */
  wasmUrl?: string | URL;
}

export interface GenerateOptions {
  /** Default 256 for generate, 512 for chat. */
  maxTokens?: number;
  /** generate only: wrap the prompt in the chat template as a single user turn. */
  chat?: boolean;
  /** Also called with every piece. */
  onPiece?: (piece: string) => void;
}

export interface Reply {
  text: string;
  ids: Uint32Array;
  tokens: number;
  stopReason: "stopToken" | "maxTokens" | "stopped";
  promptTokens: number;
  promptSeconds: number;
  generateSeconds: number;
  tokensPerSecond: number;
  /** Tokens streamed through the cache since the last reset. */
  tokensStreamed: number;
}

export interface Stats {
  tokensStreamed: number;
  cacheSlots: number;
  cacheFill: number;
  sinks: number;
  window: number;
  /** The ring slot the next token goes to. */
  writeHead: number;
  policy: Policy;
  gpuBytes: number;
  gpuBuffers: number;
  wasmBytes: number;
  tokensPerSecond: number;
  generatedTokens: number;
  promptTokens: number;
  promptTokensPerSecond: number;
  submissions: number;
  dispatches: number;
  busy: boolean;
}

export interface Slot {
  /** Index of the token in the stream (0-based). */
  n: number;
  id: number;
  text: string;
}

export interface CacheMap {
  sinks: number;
  window: number;
  writeHead: number;
  fill: number;
  tokensStreamed: number;
  /** Slots 0..sinks-1 are the sinks, the rest the ring; null = empty. */
  slots: (Slot | null)[];
}

export interface Settings extends Required<CacheOptions>, Required<SamplingOptions> {
  system: string | null;
}

export interface ModelInfo {
  source: string;
  adapter: string;
  vocab: number;
  dim: number;
  layers: number;
  heads: number;
  kvHeads: number;
  headDim: number;
  ffnDim: number;
  contextLength: number;
}

/** A generation in flight: iterate it for the pieces; leaving the loop early stops it. */
export interface TextStream extends AsyncIterableIterator<string> {
  readonly result: Promise<Reply>;
  text(): Promise<string>;
}

export declare class Sinkstream {
  generate(prompt: string, options?: GenerateOptions): TextStream;
  chat(message: string, options?: Omit<GenerateOptions, "chat">): TextStream;
  stop(): void;
  readonly busy: boolean;
  /** Forgets the stream (cache and chat). */
  reset(): void;
  /** Changes the cache; the stream starts over. */
  setCache(options: CacheOptions): void;
  /** Changes the sampling; the stream is kept. */
  setSampling(options: SamplingOptions): void;
  /** Sets the system prompt (null: the template's default); the stream starts over. */
  setSystem(system: string | null): void;
  settings(): Settings;
  stats(): Stats;
  cacheMap(): CacheMap;
  info(): ModelInfo;
  encode(text: string): Uint32Array;
  decode(ids: ArrayLike<number>): string;
  tokenText(id: number): string;
  free(): void;
}

/** One file of a Hugging Face checkpoint: its bytes, a Blob/File, or a URL to fetch. */
export type CheckpointFile = Uint8Array | ArrayBuffer | Blob | string | URL;

/**
 * A URL of a .gguf file or of a checkpoint directory (ending with "/"); a .gguf as a Blob,
 * Response, ArrayBuffer or Uint8Array; or a Hugging Face checkpoint's files (config.json,
 * tokenizer.json, tokenizer_config.json, model.safetensors or the index and its shards) as a
 * FileList, an array of Files, or a Map/object from file name to file.
 */
export type ModelSource =
  | string
  | URL
  | Blob
  | Response
  | ArrayBuffer
  | Uint8Array
  | FileList
  | File[]
  | Map<string, CheckpointFile>
  | Record<string, CheckpointFile>;

export declare function load(source: ModelSource, options?: LoadOptions): Promise<Sinkstream>;
export declare function init(wasmUrl?: string | URL): Promise<unknown>;
export declare function version(): Promise<string>;
export declare function checkWebGPU(): Promise<{ ok: true; adapter: string } | { ok: false; reason: string }>;
export declare function forgetCachedModel(url?: string | URL, cacheName?: string): Promise<boolean>;
export declare function isModelCached(url: string | URL, cacheName?: string): Promise<boolean>;
export declare const DEFAULT_CACHE_NAME: string;
export declare const NO_WEBGPU_HELP: string;
export { Engine } from "./pkg/sinkstream.js";
