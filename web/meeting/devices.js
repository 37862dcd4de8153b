/** Cameras and microphones: the list to choose from, a stream of the chosen ones, and a level
 * meter that shows the microphone is heard. */

/** Inputs by kind: {audioinput: [...], videoinput: [...]}; labels appear once access is granted. */
export async function listDevices() {
  const devices = await navigator.mediaDevices.enumerateDevices();
  const byKind = { audioinput: [], videoinput: [] };
  for (const device of devices) {
    if (device.kind in byKind && device.deviceId) byKind[device.kind].push(device);
  }
  return byKind;
}

/**
 * The chosen devices' stream. Either kind may be left out (`false`), or fail on its own (no camera,
 * access refused for it): what works is returned, with the failures in `problems`.
 */
export async function openDevices({ audio = true, video = true, micId, cameraId, width = 1280, height = 720 } = {}) {
  const audioConstraint = audio && (micId ? { deviceId: { exact: micId } } : true);
  const videoConstraint = video && { width: { ideal: width }, height: { ideal: height }, ...(cameraId ? { deviceId: { exact: cameraId } } : {}) };
  const problems = [];
  if (!audioConstraint && !videoConstraint) return { stream: new MediaStream(), problems };
  try {
    return { stream: await navigator.mediaDevices.getUserMedia({ audio: audioConstraint, video: videoConstraint }), problems };
  } catch (error) {
    if (!audioConstraint || !videoConstraint) return { stream: new MediaStream(), problems: [error] };
  }
  // Together they failed: try each alone, so a missing camera still leaves the microphone.
  const stream = new MediaStream();
  for (const constraints of [{ audio: audioConstraint }, { video: videoConstraint }]) {
    try {
      for (const track of (await navigator.mediaDevices.getUserMedia(constraints)).getTracks()) stream.addTrack(track);
    } catch (error) {
      problems.push(error);
    }
  }
  return { stream, problems };
}

/**
 * Drives `meter` (a <meter> 0..1) with the loudness of the stream's microphone; returns the stop
 * function. Reads the analyser a few times a second, which is all a meter needs.
 */
export function levelMeter(stream, meter) {
  const [track] = stream.getAudioTracks();
  if (!track || !globalThis.AudioContext) return () => {};
  const context = new AudioContext();
  const analyser = context.createAnalyser();
  analyser.fftSize = 512;
  context.createMediaStreamSource(new MediaStream([track])).connect(analyser);
  const samples = new Float32Array(analyser.fftSize);
  const timer = setInterval(() => {
    analyser.getFloatTimeDomainData(samples);
    let sum = 0;
    for (const sample of samples) sum += sample * sample;
    const rms = Math.sqrt(sum / samples.length);
    // -60 dBFS and below reads as silence, 0 dBFS as full.
    const level = track.enabled ? Math.max(0, 1 + (20 * Math.log10(rms || 1e-9)) / 60) : 0;
    meter.value = Math.round(level * 100) / 100;
  }, 100);
  return () => {
    clearInterval(timer);
    context.close().catch(() => {});
  };
}

export function stopStream(stream) {
  for (const track of stream?.getTracks() ?? []) track.stop();
}
