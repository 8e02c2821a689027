// undici ships no types for its files, only for its index; the Agent class
// is the same one (see src/imds/http.ts for why it is imported alone).
declare module "undici/lib/dispatcher/agent.js" {
  import { Agent } from "undici";
  export default Agent;
}
