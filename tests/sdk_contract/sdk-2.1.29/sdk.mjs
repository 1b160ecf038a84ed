// The pinned SDK of this directory, for the shared contract apps in ../apps (they import it by path).
export * from "@mentra/sdk";
