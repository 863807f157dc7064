#!/usr/bin/env bash
# Kept for old habits: the mount benchmark is now bench/fs.sh (Coffer per FUSE transport, side by
# side with gocryptfs, securefs, CryFS, a plain directory and tmpfs; same environment variables).
exec bash "$(dirname "$0")/fs.sh" "$@"
