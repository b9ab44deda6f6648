import CoreML
import CryptoKit
import Foundation
import XCTest

// Written without a Mac or a Swift toolchain: not compiled or run where it was written.

/// One `MLUpdateTask` on the export's `coreml/UpdatableClassifier.mlmodel`, on the rows that
/// `alambic personalize BUNDLE FEEDBACK --out DIR` updated with off the device, against its result.
///
/// - `ALAMBIC_BUNDLE`: the export folder (or its `coreml/` folder, or the `.mlmodel` itself);
/// - `ALAMBIC_PERSONALIZED`: the `--out` folder of `alambic personalize`, holding `update_inputs.json`:
///   every feedback row as the app feeds the model (token ids and mask, label name, part: `update`
///   or `held_out`), the settings used, and the off-device heads' label for each held-out row.
///
/// The update runs with the model's own parameters (no `MLModelConfiguration.parameters`), as
/// `personalize` does without `--learning-rate`, `--batch-size` or `--epochs`. Core ML shuffles the
/// rows each epoch with its own draw, so the two heads are close, not equal: the check asks for the
/// held-out accuracy within 5 points of the off-device figure and the same label on at least 90%
/// of the held-out rows.
final class UpdateCheckTests: XCTestCase {
    static let modelFile = "UpdatableClassifier.mlmodel"
    static let inputsFile = "update_inputs.json"
    static let accuracyTolerance = 0.05  // held-out accuracy, device vs off-device
    static let minimumAgreement = 0.90  // share of held-out rows given the same label
    static let updateTimeout: TimeInterval = 1800

    /// update_inputs.json, as `alambic personalize` writes it (keys it adds later are ignored).
    struct UpdateInputs: Decodable {
        struct Settings: Decodable {
            let learning_rate: Double
            let batch_size: Int
            let epochs: Int
            let shuffle: Bool
            let momentum: Double
            let spec_defaults: Bool  // false: personalize ran with an app's pick, not the model's own
        }

        struct Row: Decodable {
            let part: String  // "update" or "held_out"
            let row: Int  // its index in the feedback file
            let label: String
            let input_ids: [Int]
            let attention_mask: [Int]
        }

        struct OffDevice: Decodable {
            let held_out_before: Double?
            let held_out_after: Double?
            let predicted_before: [String]  // the initial head's label per held-out row, in their order
            let predicted: [String]  // the off-device updated head's label per held-out row
            let losses: [Double]  // mean loss per epoch
        }

        let model_sha256: String
        let labels: [String]
        let settings: Settings
        let rows: [Row]
        let off_device: OffDevice
    }

    func testOneUpdateTaskMatchesTheOffDeviceUpdate() throws {
        let environment = ProcessInfo.processInfo.environment
        guard let bundlePath = environment["ALAMBIC_BUNDLE"], !bundlePath.isEmpty,
              let personalizedPath = environment["ALAMBIC_PERSONALIZED"], !personalizedPath.isEmpty
        else {
            throw XCTSkip("set ALAMBIC_BUNDLE (the `alambic export ... --format coreml` folder) and "
                + "ALAMBIC_PERSONALIZED (the --out folder of `alambic personalize BUNDLE FEEDBACK --out DIR`) "
                + "to run one MLUpdateTask against the off-device update")
        }
        guard let modelURL = Self.updatableModel(URL(fileURLWithPath: bundlePath)) else {
            XCTFail("\(bundlePath): no coreml/\(Self.modelFile) (export with `alambic export RUN --format coreml`, "
                + "option coreml.updatable on)")
            return
        }
        let inputsURL = URL(fileURLWithPath: personalizedPath).appendingPathComponent(Self.inputsFile)
        guard FileManager.default.fileExists(atPath: inputsURL.path) else {
            XCTFail("\(inputsURL.path) is missing: run `alambic personalize BUNDLE FEEDBACK --out "
                + "\(personalizedPath)` (with fewer feedback rows than --min-samples it writes nothing)")
            return
        }
        let inputs = try JSONDecoder().decode(UpdateInputs.self, from: Data(contentsOf: inputsURL))

        // the off-device update must have been of this very file, with its own settings
        let modelData = try Data(contentsOf: modelURL)
        let digest = SHA256.hash(data: modelData).map { String(format: "%02x", $0) }.joined()
        guard digest == inputs.model_sha256 else {
            XCTFail("\(inputsURL.path) was written for another UpdatableClassifier.mlmodel than \(modelURL.path): "
                + "run `alambic personalize` on this bundle")
            return
        }
        guard inputs.settings.spec_defaults else {
            XCTFail("\(inputsURL.path): personalize ran with --learning-rate/--batch-size/--epochs "
                + "(learning rate \(inputs.settings.learning_rate), batch \(inputs.settings.batch_size), "
                + "\(inputs.settings.epochs) epochs); this check runs the model's own: rerun personalize without them")
            return
        }
        let update = inputs.rows.filter { $0.part == "update" }
        let heldOut = inputs.rows.filter { $0.part == "held_out" }
        guard !update.isEmpty, !heldOut.isEmpty, let offDeviceAfter = inputs.off_device.held_out_after else {
            XCTFail("\(inputsURL.path): \(update.count) update rows, \(heldOut.count) held out: rerun personalize "
                + "with a --holdout above 0")
            return
        }
        XCTAssertEqual(inputs.off_device.predicted.count, heldOut.count, "one off-device label per held-out row")
        XCTAssertEqual(inputs.off_device.predicted_before.count, heldOut.count)
        print("UpdateCheck: \(update.count) rows to update with, \(heldOut.count) held out; model's settings: "
            + "learning rate \(inputs.settings.learning_rate), mini-batch \(inputs.settings.batch_size), "
            + "\(inputs.settings.epochs) epochs, shuffle \(inputs.settings.shuffle)")

        let work = FileManager.default.temporaryDirectory
            .appendingPathComponent("UpdateCheck-\(UUID().uuidString)", isDirectory: true)
        try FileManager.default.createDirectory(at: work, withIntermediateDirectories: true)
        defer { _ = try? FileManager.default.removeItem(at: work) }
        let updatedURL = work.appendingPathComponent("UpdatableClassifier.updated.mlmodelc", isDirectory: true)

        // an update needs the compiled model (.mlmodelc); compileModel writes it to a temporary place
        let compiledURL = try MLModel.compileModel(at: modelURL)
        let trainingData = MLArrayBatchProvider(array: try update.map { try Self.features($0, label: true) })

        let outcome = Outcome()
        let finished = expectation(description: "MLUpdateTask completion")
        let handlers = MLUpdateProgressHandlers(
            forEvents: [.epochEnd],
            progressHandler: { context in
                outcome.epochEnded(loss: Self.number(context.metrics[.lossValue]))
            },
            completionHandler: { context in
                var writeError: Error?
                if context.task.state == .completed {
                    do {
                        try context.model.write(to: updatedURL)
                    } catch {
                        writeError = error
                    }
                }
                outcome.finish(state: context.task.state, error: context.task.error, writeError: writeError,
                               parameters: context.parameters)
                finished.fulfill()
            })
        // configuration nil: the parameters the model itself holds, no overrides
        let task = try MLUpdateTask(forModelAt: compiledURL, trainingData: trainingData, configuration: nil,
                                    progressHandlers: handlers)
        task.resume()
        wait(for: [finished], timeout: Self.updateTimeout)  // a timeout is recorded as a failure

        let result = outcome.snapshot()
        if result.state == .running {
            task.cancel()
        }
        XCTAssertEqual(result.state, .completed, "the update did not complete: \(String(describing: result.error))")
        XCTAssertNil(result.error, "the update reported an error")
        XCTAssertNil(result.writeError, "the updated model could not be written to \(updatedURL.path)")
        guard result.state == .completed, result.error == nil, result.writeError == nil else { return }
        checkParameters(result.parameters, inputs.settings)
        print("UpdateCheck: loss per epoch, device \(Self.format(result.losses)) vs off-device "
            + "\(Self.format(inputs.off_device.losses)) (the device's lossValue at each epoch's end)")

        // predictions of the held-out rows: the initial model (diagnostic), then the device-updated one
        let initialLabels = try Self.predict(try MLModel(contentsOf: compiledURL), heldOut)
        let deviceLabels = try Self.predict(try MLModel(contentsOf: updatedURL), heldOut)
        let truth = heldOut.map(\.label)
        let deviceBefore = Self.share(initialLabels, truth)
        let deviceAfter = Self.share(deviceLabels, truth)
        let agreement = Self.share(deviceLabels, inputs.off_device.predicted)
        print("UpdateCheck: held-out accuracy after the update: device \(Self.percent(deviceAfter)), off-device "
            + "\(Self.percent(offDeviceAfter)) (before: device \(Self.percent(deviceBefore)), off-device "
            + "\(Self.percent(inputs.off_device.held_out_before ?? .nan)))")
        let initialAgreement = Self.share(initialLabels, inputs.off_device.predicted_before)
        print("UpdateCheck: same label as the off-device head on \(Self.percent(agreement)) of \(heldOut.count) "
            + "held-out rows (the initial models: \(Self.percent(initialAgreement)))")

        XCTAssertLessThanOrEqual(abs(deviceAfter - offDeviceAfter), Self.accuracyTolerance + 1e-9,
                                 "held-out accuracy after the update: device \(Self.percent(deviceAfter)), "
                                 + "off-device \(Self.percent(offDeviceAfter)): more than 5 points apart")
        XCTAssertGreaterThanOrEqual(agreement, Self.minimumAgreement,
                                    "the device-updated model gives the off-device head's label on "
                                    + "\(Self.percent(agreement)) of the held-out rows, under 90%")
    }

    /// The parameters the task reports having used, where it reports them, against update_inputs.json.
    func checkParameters(_ parameters: [MLParameterKey: Any], _ settings: UpdateInputs.Settings) {
        let reported: [(String, MLParameterKey, Double)] = [
            ("learning rate", .learningRate, settings.learning_rate),
            ("mini-batch size", .miniBatchSize, Double(settings.batch_size)),
            ("epochs", .epochs, Double(settings.epochs)),
            ("shuffle", .shuffle, settings.shuffle ? 1 : 0),
        ]
        for (name, key, expected) in reported {
            guard let value = Self.number(parameters[key]) else {
                print("UpdateCheck: the task did not report its \(name)")
                continue
            }
            XCTAssertEqual(value, expected, accuracy: 1e-6 * max(1, abs(expected)),
                           "the task's \(name) is not the one personalize read from the model")
        }
    }

    // MARK: - helpers

    /// What the update task reported, written from Core ML's handlers and read after the wait.
    final class Outcome: @unchecked Sendable {  // its state is behind the lock
        struct Snapshot {
            var state: MLTaskState = .running
            var error: Error?
            var writeError: Error?
            var parameters: [MLParameterKey: Any] = [:]
            var losses: [Double?] = []
        }

        private let lock = NSLock()
        private var current = Snapshot()

        func epochEnded(loss: Double?) {
            lock.lock()
            defer { lock.unlock() }
            current.losses.append(loss)
        }

        func finish(state: MLTaskState, error: Error?, writeError: Error?, parameters: [MLParameterKey: Any]) {
            lock.lock()
            defer { lock.unlock() }
            current.state = state
            current.error = error
            current.writeError = writeError
            current.parameters = parameters
        }

        func snapshot() -> Snapshot {
            lock.lock()
            defer { lock.unlock() }
            return current
        }
    }

    /// The updatable model of an export folder, its coreml/ folder, or the .mlmodel itself.
    static func updatableModel(_ bundle: URL) -> URL? {
        let candidates = [bundle.appendingPathComponent("coreml").appendingPathComponent(modelFile),
                          bundle.appendingPathComponent(modelFile), bundle]
        return candidates.first { $0.pathExtension == "mlmodel" && FileManager.default.fileExists(atPath: $0.path) }
    }

    /// A row as the app feeds the updatable model: Float32 (1, T) ids and mask, and for an update the
    /// training input `label` (String, one of the model's labels).
    static func features(_ row: UpdateInputs.Row, label: Bool) throws -> MLFeatureProvider {
        var values: [String: MLFeatureValue] = [
            "input_ids": MLFeatureValue(multiArray: try float32(row.input_ids)),
            "attention_mask": MLFeatureValue(multiArray: try float32(row.attention_mask)),
        ]
        if label {
            values["label"] = MLFeatureValue(string: row.label)
        }
        return try MLDictionaryFeatureProvider(dictionary: values)
    }

    /// A (1, T) Float32 MLMultiArray (the neural-network format has no Int32 inputs).
    static func float32(_ values: [Int]) throws -> MLMultiArray {
        let array = try MLMultiArray(shape: [1, NSNumber(value: values.count)], dataType: .float32)
        for (i, value) in values.enumerated() {
            array[i] = NSNumber(value: Float(value))
        }
        return array
    }

    struct NoLabel: LocalizedError {
        let row: Int
        var errorDescription: String? { "feedback row \(row): the model's output has no String feature 'label'" }
    }

    /// The model's `label` output for each row, in order.
    static func predict(_ model: MLModel, _ rows: [UpdateInputs.Row]) throws -> [String] {
        try rows.map { row -> String in
            let output = try model.prediction(from: try features(row, label: false))
            guard let label = output.featureValue(for: "label")?.stringValue, !label.isEmpty else {
                throw NoLabel(row: row.row)
            }
            return label
        }
    }

    /// Share of positions where the two lists agree (over the shorter one's length).
    static func share(_ found: [String], _ expected: [String]) -> Double {
        let count = min(found.count, expected.count)
        guard count > 0 else { return .nan }
        return Double(zip(found, expected).filter { $0.0 == $0.1 }.count) / Double(count)
    }

    /// A metric or parameter value (NSNumber, Double, Float, Int64, Int or Bool) as a Double.
    static func number(_ value: Any?) -> Double? {
        guard let value = value else { return nil }
        switch value {
        case let n as NSNumber: return n.doubleValue
        case let n as Double: return n
        case let n as Float: return Double(n)
        case let n as Int64: return Double(n)
        case let n as Int: return Double(n)
        case let n as Bool: return n ? 1 : 0
        default: return nil
        }
    }

    static func percent(_ value: Double) -> String {
        value.isNaN ? "n/a" : String(format: "%.1f%%", 100 * value)
    }

    static func format(_ losses: [Double?]) -> String {
        let values = losses.map { loss -> String in
            guard let loss = loss else { return "?" }
            return String(format: "%.4f", loss)
        }
        return "[" + values.joined(separator: ", ") + "]"
    }
}
