// Types for @streamhost/client (hand-written; the source is plain ESM in index.js).

export declare const CloseCodes: Readonly<{
  GOING_AWAY: 1001
  TOO_BIG: 1009
  SLOW: 4008
  IDLE: 4010
  TOKEN_EXPIRED: 4401
  TENANT_DISABLED: 4403
}>

/** A server frame (iii stream wire contract, plus the resume fields). */
export interface StreamFrame<T = unknown> {
  type: 'stream'
  timestamp: number
  streamName: string
  groupId: string
  id: string | null
  event:
    | { type: 'sync'; data: T[] | T | null }
    | { type: 'create' | 'update' | 'delete'; data: T }
    | { type: 'event'; event: { type: string; data: unknown } }
    | { type: 'recovered'; data: { missed: number } }
    | { type: 'unauthorized' }
    | { type: 'presence'; data: PresenceData }
  offset?: number
  epoch?: string
  recovered?: boolean
}

export interface ReconnectOptions {
  /** First delay before reconnecting (default 250 ms). */
  initialDelayMs?: number
  /** Longest delay (default 10 000 ms). */
  maxDelayMs?: number
  /** Growth per failed attempt (default 2). Each delay is jittered between half and all of it. */
  factor?: number
}

export interface StreamClientOptions {
  /** A token, or a function giving one (called before every connect, so it can refresh). */
  token?: string | (() => string | Promise<string>)
  /** How the token travels: subprotocols `Authorization, <token>` (default) or `?token=`. */
  tokenVia?: 'protocol' | 'query'
  /** Ask for `heartbeat` frames (`?heartbeat=1`) and watch them (default true). */
  heartbeat?: boolean
  /** The server's heartbeat interval, if known (default 15 000 ms; learnt when longer). */
  heartbeatIntervalMs?: number
  reconnect?: ReconnectOptions
  /** Open the socket in the constructor (default true). */
  connect?: boolean
  /** A WebSocket class, where there is no global one. */
  WebSocket?: typeof WebSocket
}

export interface SubscriptionOptions<T = unknown> {
  /** The item id of a value in a group's `sync` (which lists values only); default `value.id`. */
  keyOf?: (value: T) => string | undefined
  /**
   * Ask for the group's presence: a snapshot, then join/leave frames, kept in `members`. The
   * stream must keep presence (server config `presence.streams`), or the join is refused with
   * the error `presence_not_enabled`.
   */
  presence?: boolean
  /** What other members see of this client (JSON, at most 1 KiB and 4 levels deep). */
  info?: unknown
  /** Called on every presence change (the same as `on('presence', ...)`). */
  onPresence?: (change: PresenceChange) => void
}

/** One member of a group: one connection, with its token's `sub` (null when anonymous). */
export interface Member {
  client: string
  user: string | null
  info: unknown
}

export type PresenceData =
  | { action: 'snapshot'; members: Member[]; count: number }
  | { action: 'join' | 'leave'; member: Member }

export interface PresenceChange {
  action: 'snapshot' | 'join' | 'leave'
  /** The member who joined or left; null for a snapshot. */
  member: Member | null
  /** The listed members after the change, by client id. */
  members: Map<string, Member>
  frame: StreamFrame
}

export interface ChangeEvent<T = unknown> {
  type: 'create' | 'update' | 'delete'
  id: string | null
  data: T
  offset: number | null
  frame: StreamFrame<T>
}

export interface CustomEvent {
  /** The name given to `stream::send`. */
  type: string
  data: unknown
  id: string | null
  offset: number | null
  frame: StreamFrame
}

export interface SubscriptionStats {
  syncs: number
  recoveries: number
  missed: number
  duplicates: number
  gaps: number
}

declare class Emitter<Events extends Record<string, unknown[]>> {
  on<K extends keyof Events>(name: K, fn: (...args: Events[K]) => void): () => void
  off<K extends keyof Events>(name: K, fn: (...args: Events[K]) => void): void
}

export type SubscriptionEvents<T> = {
  /** The state changed (a sync or a create/update/delete). */
  state: [Subscription<T>]
  sync: [{ recovered: boolean; frame: StreamFrame<T> }]
  recovered: [{ missed: number; frame: StreamFrame<T> }]
  change: [ChangeEvent<T>]
  event: [CustomEvent]
  unauthorized: [StreamFrame<T>]
  presence: [PresenceChange]
}

export declare class Subscription<T = unknown> extends Emitter<SubscriptionEvents<T>> {
  readonly client: StreamClient
  readonly id: string
  readonly streamName: string
  readonly groupId: string
  /** null for a group subscription. */
  readonly itemId: string | null
  /** Group subscriptions: item id -> value. */
  readonly items: Map<string, T>
  /** Item subscriptions: the value, or null. */
  readonly value: T | null
  /** The last offset seen and its epoch (null until the server sends them). */
  readonly offset: number | null
  readonly epoch: string | null
  readonly ready: boolean
  readonly stats: SubscriptionStats
  /** Whether this subscription asked for presence. */
  readonly presence: boolean
  /** Presence: the listed members, by client id (up to the server's `max_members`). */
  readonly members: Map<string, Member>
  /** Presence: how many members the group has, listed or not. */
  readonly memberCount: number
  values(): T[]
  leave(): void
}

export type ClientState = 'idle' | 'connecting' | 'open' | 'reconnecting' | 'closed'

export type ClientEvents = {
  state: [ClientState]
  open: []
  close: [{ code: number; reason: string }]
  reconnecting: [{ attempt: number; delayMs: number }]
  tokenexpired: []
  timeout: []
  heartbeat: []
  frame: [StreamFrame]
  error: [unknown]
}

export declare class StreamClient extends Emitter<ClientEvents> {
  constructor(url: string, options?: StreamClientOptions)
  readonly url: string
  readonly state: ClientState
  readonly stats: { connects: number; reconnects: number; heartbeats: number; watchdogCloses: number }
  group<T = unknown>(streamName: string, groupId: string, options?: SubscriptionOptions<T>): Subscription<T>
  item<T = unknown>(streamName: string, groupId: string, itemId: string, options?: SubscriptionOptions<T>): Subscription<T>
  connect(): void
  close(): void
}
