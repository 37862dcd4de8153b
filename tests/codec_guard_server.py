"""Runs the real server with aiortc's codec factories booby-trapped: the SFU must forward packets
without ever asking for a decoder or an encoder, so any call is logged for the test to find."""

import logging
import sys

import aiortc.codecs
import aiortc.rtcrtpreceiver
import aiortc.rtcrtpsender

from control.cli import main

CODEC_USED = "CODEC-GUARD: a codec was created in the server process"


def _trap(name: str):
    def trapped(*args, **kwargs):
        logging.getLogger("huiyi.codec-guard").error("%s (%s)", CODEC_USED, name)
        raise AssertionError(CODEC_USED)

    return trapped


def install() -> None:
    for module in (aiortc.codecs, aiortc.rtcrtpreceiver, aiortc.rtcrtpsender):
        for factory in ("get_decoder", "get_encoder"):
            if hasattr(module, factory):
                setattr(module, factory, _trap(factory))


if __name__ == "__main__":
    install()
    sys.exit(main())
