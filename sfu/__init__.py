"""The media plane: a selective forwarding unit on aiortc's ICE, DTLS and SRTP."""
